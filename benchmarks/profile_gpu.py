"""Profile tpn's compiled training step on a GPU and compare execution variants.

For each variant: clips/s and peak memory; for the first, the torch.profiler top kernels
grouped as convolution/GEMM (cuDNN, cuBLAS), Triton (inductor's fused BN/ReLU/etc.) and
other. Variants:
  base        bf16 + channels_last_3d + torch.compile (the default training set-up)
  cudagraphs  as base, compiled with mode="reduce-overhead" (CUDA graphs)
  cp1 / cp12  as base, with activation checkpointing of stage 1 / stages 1-2
  cdt         as base, with inductor's coordinate-descent tuning of its Triton kernels
  cdtcg       cdt + CUDA graphs
  mat         as base, compiled with mode="max-autotune-no-cudagraphs"
  fbn         as base, with train.fused_bn (tpn's Triton BatchNorm kernels)
--test-profile adds the top kernels of the 30-view test forward (BN folded, bf16, compiled).
    python benchmarks/profile_gpu.py --batch 32 --variants base,cudagraphs,cp1 --out prof.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.accel import Execution  # noqa: E402
from tpn.bench import machine_info, timed  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.models.build import build_model  # noqa: E402
from train_step import make_train_step  # noqa: E402


def category(name: str) -> str:
    n = name.lower()
    if n.startswith(("_stats_kernel", "_apply_kernel", "_grad_stats_kernel", "_grad_input_kernel")):
        return "tpn fused BN (Triton, train.fused_bn)"
    if n.startswith("triton"):
        return "triton (fused pointwise/reduction)"
    if any(k in n for k in ("conv", "xmma", "cudnn", "gemm", "sm90", "cutlass", "implicit", "wgrad", "dgrad")):
        return "convolution / GEMM"
    return "other"


TOP = [20]  # --top: kernels listed per profile


def kernel_profile(fn, reps: int = 3) -> dict:
    """GPU ms per call, share of GPU time per category and the top kernels of `fn` (already warm)."""
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    events = [e for e in p.key_averages() if e.device_type.name == "CUDA" or e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    groups: dict[str, float] = {}
    for e in events:
        groups[category(e.key)] = groups.get(category(e.key), 0.0) + e.self_device_time_total
    top = sorted(events, key=lambda e: -e.self_device_time_total)[:TOP[0]]
    shares = {k: round(v / total, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
    return dict(gpu_ms_per_call=round(total / reps / 1000, 3), gpu_time_share=shares,
                top_kernels=[dict(name=e.key[:110], share=round(e.self_device_time_total / total, 4),
                                  ms=round(e.self_device_time_total / reps / 1000, 4), calls=e.count // reps)
                             for e in top])


@torch.no_grad()
def profile_test(videos: int, variant: str = "fold_bf16w") -> dict:
    """The 30-view test forward (BN folded, bf16 autocast, channels_last_3d, compiled): videos/s
    and kernels. Variants: fold (fp32 weights cast by autocast), fold_bf16w (weights held in
    bf16), fold_bf16w_cg (+ CUDA graphs)."""
    from tpn.accel import Execution, make_eval_forward

    cfg = load_config("tpn_r50_8x8_k400")
    model = build_model(cfg).cuda().eval()
    ex = Execution(torch.bfloat16, True, "reduce-overhead" if variant.endswith("_cg") else True)
    fwd = make_eval_forward(model, cfg.data.mean, cfg.data.std, ex, fold_bn=True,
                            low_precision_weights="bf16w" in variant)
    x8 = torch.randint(0, 255, (videos * 30, 3, 8, 256, 256), dtype=torch.uint8, device="cuda")
    rec = dict(variant=f"test30_{variant}_compile", videos=videos,
               videos_per_s=videos * 5 / timed(lambda: fwd(x8), 5, warmup=3, device="cuda"))
    rec.update(kernel_profile(lambda: fwd(x8)))
    rec["layout_transform_share"] = round(sum(k["share"] for k in rec["top_kernels"]
                                              if "nchwToNhwc" in k["name"] or "nhwcToNchw" in k["name"]), 4)
    return rec


def run_variant(variant: str, batch: int, steps: int, profile: bool) -> dict:
    torch.manual_seed(0)
    torch._inductor.config.coordinate_descent_tuning = variant.startswith("cdt")
    overrides = {"cp1": ["model.backbone.with_cp=[1]"], "cp12": ["model.backbone.with_cp=[1,2]"]}.get(variant, [])
    cfg = load_config("tpn_r50_8x8_k400", overrides)
    try:
        model = build_model(cfg).cuda().train()
        mode = {"cudagraphs": "reduce-overhead", "cdtcg": "reduce-overhead",
                "mat": "max-autotune-no-cudagraphs"}.get(variant, True)
        ex = Execution(torch.bfloat16, True, mode, fused_bn=variant == "fbn")
        step = make_train_step(model, cfg.data.mean, cfg.data.std, ex, cfg.train)
        x8 = torch.randint(0, 255, (batch, 3, 8, 224, 224), dtype=torch.uint8, device="cuda")
        labels = torch.arange(batch, device="cuda") % 400
        timed(lambda: step(x8, labels), 4, device="cuda")
        torch.cuda.reset_peak_memory_stats()
        dt = timed(lambda: step(x8, labels), steps, device="cuda")
        rec = dict(variant=variant, batch=batch, clips_per_s=batch * steps / dt, step_ms=1000 * dt / steps,
                   peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30)
        rec["mem_per_clip_gb"] = rec["peak_mem_gb"] / batch
        if profile:
            rec.update(kernel_profile(lambda: step(x8, labels)))
        return rec
    finally:
        torch._inductor.config.coordinate_descent_tuning = False
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--variants", default="base,cudagraphs,cp1")
    ap.add_argument("--no-profile", action="store_true", help="no kernel profile of the first variant")
    ap.add_argument("--profile-all", action="store_true", help="a kernel profile of every variant")
    ap.add_argument("--top", type=int, default=20, help="kernels listed per profile")
    ap.add_argument("--test-profile", type=int, default=0, metavar="VIDEOS",
                    help="also profile the 30-view test forward at this many videos per batch")
    ap.add_argument("--test-variants", default="fold_bf16w", help="fold, fold_bf16w, fold_bf16w_cg")
    ap.add_argument("--out", default="profile_gpu.json")
    args = ap.parse_args()
    TOP[0] = args.top
    torch.backends.cudnn.benchmark = True
    results = [dict(machine=machine_info())]
    for i, v in enumerate(v for v in args.variants.split(",") if v):
        try:
            rec = run_variant(v, args.batch, args.steps, profile=(i == 0 or args.profile_all) and not args.no_profile)
        except Exception as e:  # noqa: BLE001
            rec = dict(variant=v, error=repr(e)[:300])
        torch.cuda.empty_cache()
        torch._dynamo.reset()
        results.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "top_kernels"}), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))  # after each: a timeout keeps the rest
    for v in (args.test_variants.split(",") if args.test_profile else []):
        try:
            rec = profile_test(args.test_profile, v)
        except Exception as e:  # noqa: BLE001
            rec = dict(variant=f"test30_{v}", error=repr(e)[:300])
        torch.cuda.empty_cache()
        torch._dynamo.reset()
        results.append(rec)
        print(json.dumps({k: v for k, v in rec.items() if k != "top_kernels"}), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
