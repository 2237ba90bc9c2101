"""How close training BatchNorm + ReLU runs to the GPU's memory bandwidth, per R50 tensor shape.

Issue 18 asks whether BatchNorm's memory traffic can be cut. This measures, for each BN'd tensor
shape of TPN R50 8x8's backbone at batch 32 (8x224x224 clips, channels_last_3d, bf16), the time of
y = relu(batch_norm(x)) forward + backward (batch statistics, running statistics updated) as
torch.compile generates it (what training runs), in eager mode (cuDNN's BN) and as tpn's Triton
kernels (`train.fused_bn`, `tpn.models.fused_bn`, compiled the same way), against a bound:
the fewest bytes any implementation without conv fusion must move (forward: read x for the
statistics, read x and write y; backward: read dy and x for the two reductions, read them again
and write dx: 7 passes over the tensor) at the bandwidth a device-to-device copy reaches.
`efficiency` = bound / measured time: 1.0 means a hand-written kernel cannot beat it.

Times are the GPU time of the kernels a call runs (torch.profiler, summed), not wall time: a
small tensor's call is otherwise bound by Python and launch overhead, which in the training step
overlaps the GPU's work. --configs also times tpn's kernels at other tile sizes
(BLOCK_M x BLOCK_C x warps), to choose `tpn.models.fused_bn`'s.

    python benchmarks/bn_bandwidth.py --out bn_bandwidth.json --configs 128x64x4,256x64x8,64x128x4
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.bench import machine_info  # noqa: E402

# (channels, spatial side) of every BN'd tensor of the R50 8x8 backbone at 224 crop, with how
# many BN layers have it (stem; stage 1-4 conv1/conv2 and conv3/downsample outputs)
SHAPES = [(64, 112, 1), (64, 56, 6), (256, 56, 4), (128, 56, 1), (128, 28, 7), (512, 28, 5),
          (256, 28, 1), (256, 14, 11), (1024, 14, 7), (512, 14, 1), (512, 7, 5), (2048, 7, 4)]


def cuda_time(fn, reps: int = 10) -> float:
    """GPU seconds per call of `fn`: the summed time of the kernels it runs (after 3 warm-up calls)."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in p.key_averages()) / reps / 1e6


def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy of 1 GiB (read + write counted)."""
    a = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() * a.element_size() / cuda_time(lambda: b.copy_(a))


def bn_relu(x, w, b, rm, rv):
    return F.relu(F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5))


def measure(shape: tuple[int, int, int], batch: int, compiled, fused, configs=()) -> dict:
    c, side, layers = shape
    x = torch.randn(batch, c, 8, side, side, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    w = torch.ones(c, device="cuda", requires_grad=True)
    b = torch.zeros(c, device="cuda", requires_grad=True)
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    dy = torch.randn_like(x)

    def step(fn):
        def run():
            y = fn(x, w, b, rm, rv)
            y.backward(dy)
        return run

    rec = dict(channels=c, side=side, layers=layers, mbytes=round(x.numel() * 2 / 2**20, 1))
    rec["compiled_ms"] = 1000 * cuda_time(step(compiled))
    rec["eager_ms"] = 1000 * cuda_time(step(bn_relu))
    if fused is not None:
        bn = torch.nn.BatchNorm3d(c).cuda()
        rec["fused_ms"] = 1000 * cuda_time(step(lambda x, w, b, rm, rv: fused(x, bn)))
        from tpn.models import fused_bn as fb

        default = fb.BLOCK_M, fb.BLOCK_C, fb.NUM_WARPS
        for cfg in configs:  # eager calls: the kernels' time does not depend on compile
            fb.BLOCK_M, fb.BLOCK_C, fb.NUM_WARPS = (int(v) for v in cfg.split("x"))
            rec[f"fused_{cfg}_ms"] = 1000 * cuda_time(step(lambda x, w, b, rm, rv: fb.bn_act(x, bn)))
        fb.BLOCK_M, fb.BLOCK_C, fb.NUM_WARPS = default
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-fused", action="store_true", help="leave out tpn's Triton kernels")
    ap.add_argument("--configs", default="", help="also time tpn's kernels at these BLOCK_MxBLOCK_CxWARPS")
    ap.add_argument("--out", default="bn_bandwidth.json")
    args = ap.parse_args()
    bw = copy_bandwidth()
    torch._dynamo.config.recompile_limit = 64  # one graph per shape
    compiled = torch.compile(bn_relu, dynamic=False)
    fused = None
    if not args.no_fused:
        from tpn.models.fused_bn import bn_act
        fused = torch.compile(bn_act, dynamic=False)
    rows = []
    for shape in SHAPES:
        rec = measure(shape, args.batch, compiled, fused, [c for c in args.configs.split(",") if c])
        bound_ms = 1000 * 7 * rec["mbytes"] * 2**20 / bw
        rec.update({f"efficiency_{k[:-3]}": bound_ms / v for k, v in list(rec.items()) if k.endswith("_ms")})
        rec["bound_ms"] = bound_ms
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()})
        print(json.dumps(rows[-1]), flush=True)
    total = {k: sum(r[k] * r["layers"] for r in rows) for k in rows[0] if k.endswith("_ms")}
    out = dict(machine=machine_info(), batch=args.batch, copy_gb_per_s=round(bw / 1e9, 1), shapes=rows,
               step_totals_ms={k: round(v, 2) for k, v in total.items()},
               **{f"efficiency_{k[:-3]}": round(total["bound_ms"] / v, 3) for k, v in total.items() if k != "bound_ms"})
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "shapes"}))


if __name__ == "__main__":
    main()
