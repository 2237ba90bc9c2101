"""Loss curves of the training step on fixed synthetic clips: the current path against a lever.

For each mode (bench_gpu.py's mode names): the same initial weights (--seed), the same clips in
the same order, --steps steps of benchmarks/train_step.py's step (forward with the aux head,
backward, gradient clipping, SGD), the loss of every step, the first step's time (compilation,
tuning) and the steady step time. Against the first mode: the largest relative difference of the
loss over the steps and of the mean loss of the last 20 steps. Listing the first mode again
measures the reference path's own run-to-run difference (non-deterministic cuDNN and atomic
kernels), the yardstick for the others. --out is rewritten after every run.

Clips: --clips videos of the synthetic tempo classes (tpn.data.synthetic.render: a learnable
task, real pixels), 8 frames every 8th (the 8x8 geometry) at --size x --size, uint8 on the device.

Issue 18's curves (one H100, one device call; not run yet, estimated to fit 9 minutes; the repeat
of the reference reuses inductor's cache; the +cdt tuning runs at the lever's first step and may
take minutes, so it comes last, and --out keeps the runs before it):
    export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 && timeout 540 python3 benchmarks/loss_curve.py \\
      --modes bf16_cl_compile,bf16_cl_compile,bf16_cl_compile_cdt --out $OUT/loss_curves.json
On CPU (a check of the script): --device cpu --config tpn_tiny_synth --size 32 --batch 4 --clips 8
--steps 5 --modes fp32,bf16 (bf16 through CPU autocast).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_gpu import execution, model_overrides  # noqa: E402
from train_step import make_train_step  # noqa: E402
from tpn.bench import machine_info, timed  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.data.synthetic import class_names, render  # noqa: E402
from tpn.models.build import build_model  # noqa: E402

CLIP_LEN, INTERVAL = 8, 8


def make_clips(count: int, classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 clips [count, 3, 8, size, size] and their labels, classes in turn."""
    names = class_names(classes)
    rng = np.random.default_rng(seed)
    clips, labels = [], []
    for i in range(count):
        frames = render(names[i % classes], (size, size), (CLIP_LEN - 1) * INTERVAL + 1, rng)[::INTERVAL]
        clips.append(torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2))
        labels.append(i % classes)
    return torch.stack(clips), torch.tensor(labels)


def run_curve(args, mode: str, clips: torch.Tensor, labels: torch.Tensor, device: torch.device) -> dict:
    """One mode's curve from the seeded initial weights."""
    cfg = load_config(args.config, [f"model.head.num_classes={args.classes}", *model_overrides(mode), *args.set])
    torch.manual_seed(args.seed)
    model = build_model(cfg).to(device).train()
    ex = execution(mode)
    if device.type != "cuda":  # channels_last_3d and compile are the GPU's; autocast runs on the CPU too
        ex = type(ex)(ex.amp)
    step = make_train_step(model, cfg.data.mean, cfg.data.std, ex, cfg.train, lr=args.lr)
    x, y = clips.to(device), labels.to(device)
    losses = []

    def next_step() -> None:
        j = (len(losses) * args.batch) % len(x)
        losses.append(step(x[j:j + args.batch], y[j:j + args.batch]))

    t_first = timed(next_step, 1, device=device)
    warm = min(5, args.steps - 1)  # steps 1..warm untimed, the steady rate from the next one on
    steady = args.steps - 1 - warm
    dt = timed(next_step, steady, warmup=warm, device=device)
    torch._dynamo.reset()
    return {"mode": mode, "losses": [float(v) for v in torch.stack(losses).cpu()], "first_step_s": round(t_first, 2),
            "steady_step_ms": round(1000 * dt / steady, 2) if steady else None}


def compare(ref: list[float], other: list[float], tail: int = 20, window: int = 10) -> dict:
    """Relative differences of `other`'s losses from `ref`'s: per step (max and where), of
    `window`-step moving means (less sensitive to one step's batch noise), of the last `tail` steps' mean."""
    a, b = np.array(other), np.array(ref)
    rel = np.abs(a - b) / np.abs(b)
    kernel = np.ones(min(window, len(a))) / min(window, len(a))
    sa, sb = np.convolve(a, kernel, "valid"), np.convolve(b, kernel, "valid")
    return {"max_rel_diff": float(rel.max()), "step_of_max": int(rel.argmax()),
            f"max_rel_diff_{window}_step_mean": float((np.abs(sa - sb) / np.abs(sb)).max()),
            "rel_diff_mean_last": float(abs(a[-tail:].mean() - b[-tail:].mean()) / abs(b[-tail:].mean())),
            "first_loss": float(a[0]), "last_loss": float(a[-1])}


def summary(args, runs: list[dict], env: dict) -> dict:
    ref = runs[0]
    return {"env": env, "settings": {k: v for k, v in vars(args).items() if k != "out"}, "runs": runs,
            "against_first": [{"mode": r["mode"], "run": i, "vs": ref["mode"], **compare(ref["losses"], r["losses"])}
                              for i, r in enumerate(runs[1:], 1)]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="bf16_cl_compile,bf16_cl_compile,bf16_cl_compile_cdt",
                    help="bench_gpu mode names, the reference first (repeat it for the run-to-run difference)")
    ap.add_argument("--config", default="tpn_r50_8x8_k400")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--clips", type=int, default=64, help="fixed clips, used in turn (a multiple of --batch)")
    ap.add_argument("--classes", type=int, default=24, help="synthetic tempo classes (2-24)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="loss_curves.json")
    args = ap.parse_args(argv)
    if args.clips % args.batch or args.steps < 2:
        raise SystemExit(f"--clips {args.clips} must be a multiple of --batch {args.batch}, and --steps >= 2")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = {"device": str(device), "machine": machine_info()}
    clips, labels = make_clips(args.clips, args.classes, args.size, args.seed)
    runs: list[dict] = []
    for mode in args.modes.split(","):
        print(f"{time.strftime('%H:%M:%S')} {mode}", file=sys.stderr, flush=True)
        runs.append(run_curve(args, mode, clips, labels, device))
        result = summary(args, runs, env)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "losses"} | {
            "loss_first_last": [runs[-1]["losses"][0], runs[-1]["losses"][-1]]}), flush=True)
    for c in result["against_first"]:
        print(f"{c['mode']} (run {c['run']}) vs {c['vs']}: max relative loss difference {c['max_rel_diff']:.2e} "
              f"(step {c['step_of_max']}), last-20 mean {c['rel_diff_mean_last']:.2e}", flush=True)
    return result


if __name__ == "__main__":
    main()
