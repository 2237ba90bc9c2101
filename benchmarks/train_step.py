"""A complete training step for the GPU benchmarks: forward (`tpn.accel.make_forward`),
backward, gradient clipping and fused SGD, with no host synchronisation. The training engine
(`tpn.engine.train`) builds its own optimiser, schedule and accumulation around the same
`make_forward`; this is the step without them, so timings isolate the model's execution.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.accel import Execution, make_forward  # noqa: E402
from tpn.bench import timed  # noqa: E402
from tpn.config import TrainConfig  # noqa: E402


def make_train_step(model: nn.Module, mean: Sequence[float], std: Sequence[float], ex: Execution,
                    train_cfg: TrainConfig, lr: float = 0.01) -> Callable:
    """fn(x_uint8, labels) -> loss (on the device): one step of forward, backward, clipping
    (`train_cfg.clip_grad`) and SGD (`train_cfg` momentum, nesterov, weight decay; fused on CUDA)."""
    fwd = make_forward(model, mean, std, ex, with_labels=True)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = next(model.parameters()).device.type == "cuda"
    opt = torch.optim.SGD(params, lr=lr, momentum=train_cfg.momentum, nesterov=train_cfg.nesterov,
                          weight_decay=train_cfg.weight_decay, fused=fused)

    def step(x8: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = fwd(x8, labels)["loss"]
        loss.backward()
        if train_cfg.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, train_cfg.clip_grad, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def in_gpu_rate(step: Callable, batch: int, steps: int, classes: int = 10, warmup: int = 4) -> float:
    """Clips/s of `step` on random uint8 8x224x224 clips already on the GPU (after `warmup` steps)."""
    x = torch.randint(0, 255, (batch, 3, 8, 224, 224), dtype=torch.uint8, device="cuda")
    y = torch.arange(batch, device="cuda") % classes
    return batch * steps / timed(lambda: step(x, y), steps, warmup, device="cuda")
