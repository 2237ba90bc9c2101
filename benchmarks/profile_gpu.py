"""Profile tpn's compiled training step on a GPU and compare execution variants.

For each variant: clips/s and peak memory; for the first, the torch.profiler top kernels
grouped as convolution/GEMM (cuDNN, cuBLAS), Triton (inductor's fused BN/ReLU/etc.) and
other. Variants:
  base        bf16 + channels_last_3d + torch.compile (the default training set-up)
  cudagraphs  as base, compiled with mode="reduce-overhead" (CUDA graphs)
  cp1 / cp12  as base, with activation checkpointing of stage 1 / stages 1-2
    python benchmarks/profile_gpu.py --batch 32 --variants base,cudagraphs,cp1 --out prof.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.accel import make_train_step  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.models.build import build_model  # noqa: E402


def category(name: str) -> str:
    n = name.lower()
    if n.startswith("triton"):
        return "triton (fused pointwise/reduction)"
    if any(k in n for k in ("conv", "xmma", "cudnn", "gemm", "sm90", "cutlass", "implicit", "wgrad", "dgrad")):
        return "convolution / GEMM"
    return "other"


def run_variant(variant: str, batch: int, steps: int, profile: bool) -> dict:
    torch.manual_seed(0)
    overrides = {"cp1": ["model.backbone.with_cp=[1]"], "cp12": ["model.backbone.with_cp=[1,2]"]}.get(variant, [])
    cfg = load_config("tpn_r50_8x8_k400", overrides)
    try:
        model = build_model(cfg).cuda().train()
        mode = "reduce-overhead" if variant == "cudagraphs" else True
        step = make_train_step(model, cfg, amp=True, channels_last=True, compile_model=mode)
        x8 = torch.randint(0, 255, (batch, 3, 8, 224, 224), dtype=torch.uint8, device="cuda")
        labels = torch.arange(batch, device="cuda") % 400
        for _ in range(4):
            step(x8, labels)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(x8, labels)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        rec = dict(variant=variant, batch=batch, clips_per_s=batch * steps / dt, step_ms=1000 * dt / steps,
                   peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
        rec["mem_per_clip_gb"] = rec["peak_mem_gb"] / batch
        if profile:
            from torch.profiler import ProfilerActivity, profile as prof

            with prof(activities=[ProfilerActivity.CUDA]) as p:
                for _ in range(3):
                    step(x8, labels)
                torch.cuda.synchronize()
            events = [e for e in p.key_averages() if e.device_type.name == "CUDA" or e.self_device_time_total > 0]
            total = sum(e.self_device_time_total for e in events) or 1.0
            groups: dict[str, float] = {}
            for e in events:
                groups[category(e.key)] = groups.get(category(e.key), 0.0) + e.self_device_time_total
            rec["gpu_time_share"] = {k: round(v / total, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
            top = sorted(events, key=lambda e: -e.self_device_time_total)[:20]
            rec["top_kernels"] = [
                dict(name=e.key[:110], share=round(e.self_device_time_total / total, 4), calls=e.count // 3)
                for e in top
            ]
        return rec
    finally:
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--variants", default="base,cudagraphs,cp1")
    ap.add_argument("--out", default="profile_gpu.json")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    results = [dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, date=time.strftime("%Y-%m-%d"))]
    for i, v in enumerate(args.variants.split(",")):
        try:
            rec = run_variant(v, args.batch, args.steps, profile=(i == 0))
        except Exception as e:  # noqa: BLE001
            rec = dict(variant=v, error=repr(e)[:300])
        torch.cuda.empty_cache()
        torch._dynamo.reset()
        results.append(rec)
        print(json.dumps(rec), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
