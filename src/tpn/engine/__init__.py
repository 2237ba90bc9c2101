"""Training, evaluation, checkpoints, distributed set-up and logging."""
