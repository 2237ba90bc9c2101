"""GPU throughput and memory of tpn's TPN R50 8x8 and mmaction2's own TPN, in one process.

Training: clips/s of a full step (forward with aux head + backward + clip-grad + SGD) on
8x224x224 uint8 clips already on the GPU (normalised inside the step), and peak memory.
Test: videos/s of the 30-view protocol (10 clips x 3 crops of 8x256x256).
The peer is driven by its own harness (../shared/peer/mmaction2_tpn_bench.py, copied into
.peer/ and carried to the device). One JSON line per measurement on stdout; all lines are
also written to --out.

    python benchmarks/bench_gpu.py --parts tpn_train,tpn_test,peer_train,peer_test --out results.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.config import load_config  # noqa: E402
from tpn.accel import Execution, make_eval_forward  # noqa: E402
from tpn.models.build import build_model  # noqa: E402
from tpn.models.info import measure  # noqa: E402
from train_step import make_train_step  # noqa: E402

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
RESULTS: list[dict] = []


def emit(**rec) -> None:
    RESULTS.append(rec)
    print(json.dumps(rec), flush=True)


def sync() -> None:
    torch.cuda.synchronize()


def timed(fn, steps: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    sync()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30


def execution(mode: str) -> Execution:
    """Mode names: fp32 | bf16, +cl (channels_last_3d), +compile, +cg (compile with CUDA graphs),
    +cp1 (activation checkpointing of stage 1), +fold (BN folded into convs, test only; the folded
    weights held in bf16 unless +fp32w), +pad4/+pad8 (model.backbone.stem_pad_channels), +s2d
    (model.backbone.stem_2d)."""
    return Execution(torch.bfloat16 if "bf16" in mode else None, "cl" in mode,
                     "reduce-overhead" if "cg" in mode else ("compile" in mode))


def model_overrides(mode: str) -> list[str]:
    sets = ["model.backbone.with_cp=[1]"] if "cp1" in mode else []
    sets += [f"model.backbone.stem_pad_channels={c}" for c in (4, 8) if f"pad{c}" in mode]
    return sets + (["model.backbone.stem_2d=true"] if "s2d" in mode else [])


def tpn_train(batch: int, mode: str, steps: int) -> dict:
    torch.manual_seed(0)
    cfg = load_config("tpn_r50_8x8_k400", model_overrides(mode))
    model = build_model(cfg).cuda().train()
    ex = execution(mode)
    step = make_train_step(model, cfg.data.mean, cfg.data.std, ex, cfg.train, lr=0.01)
    x8 = torch.randint(0, 255, (batch, 3, 8, 224, 224), dtype=torch.uint8, device="cuda")
    labels = torch.arange(batch, device="cuda") % 400
    t0 = time.perf_counter()
    step(x8, labels)
    sync()
    first = time.perf_counter() - t0
    dt, mem = timed(lambda: step(x8, labels), steps, warmup=3 if ex.compile else 2)
    return dict(clips_per_s=batch * steps / dt, step_ms=1000 * dt / steps, peak_mem_gb=mem,
                mem_per_clip_gb=mem / batch, first_step_s=first)


@torch.no_grad()
def tpn_test(videos: int, mode: str, reps: int) -> dict:
    cfg = load_config("tpn_r50_8x8_k400", model_overrides(mode))
    model = build_model(cfg).cuda().eval()
    fwd = make_eval_forward(model, cfg.data.mean, cfg.data.std, execution(mode), fold_bn="fold" in mode,
                            low_precision_weights="fp32w" not in mode)
    x8 = torch.randint(0, 255, (videos, 30, 3, 8, 256, 256), dtype=torch.uint8, device="cuda")

    def run():
        logits = fwd(x8.flatten(0, 1))
        return F.softmax(logits.float(), -1).view(videos, 30, -1).mean(1)

    run()
    dt, mem = timed(run, reps, warmup=1)
    return dict(videos_per_s=videos * reps / dt, peak_mem_gb=mem)


def load_peer():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".peer"))
    import mmaction2_tpn_bench as peer

    model, _ = peer.build(peer.find_config())
    return peer, model.cuda()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="tpn_train,tpn_test,peer_train,peer_test")
    ap.add_argument("--train", default="8:fp32,8:bf16_cl,32:fp32,32:bf16_cl,32:bf16_cl_compile,64:bf16_cl_compile",
                    help="batch:mode pairs for tpn")
    ap.add_argument("--peer-train", default="8:amp_fp16,32:amp_fp16,64:amp_fp16",
                    help="batch:mode pairs for mmaction2 (modes fp32, amp_fp16, plain_cl, plain_cl_compile)")
    ap.add_argument("--test", default="fp32,bf16_cl,bf16_cl_compile")
    ap.add_argument("--peer-test", default="amp_fp16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="bench_gpu.json")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    torch.backends.cudnn.benchmark = True
    cfg = load_config("tpn_r50_8x8_k400")
    info = measure(cfg)
    emit(kind="env", gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
         cudnn=torch.backends.cudnn.version(), date=time.strftime("%Y-%m-%d"),
         tpn_params=info["params_total"], fwd_flops_per_view_224=info["flops"])
    if "tpn_train" in parts:
        for item in args.train.split(","):
            b, mode = item.split(":")
            try:
                r = tpn_train(int(b), mode, args.steps)
            except Exception as e:  # noqa: BLE001 - an OOM at a big batch is a result too
                r = dict(error=repr(e)[:300])
            torch.cuda.empty_cache()
            torch._dynamo.reset()
            emit(kind="train", impl="tpn", batch=int(b), mode=mode, **r)
    if "tpn_test" in parts:
        for mode in args.test.split(","):
            try:
                r = tpn_test(2, mode, reps=5)
            except Exception as e:  # noqa: BLE001
                r = dict(error=repr(e)[:300])
            torch.cuda.empty_cache()
            torch._dynamo.reset()
            emit(kind="test30", impl="tpn", videos=2, mode=mode, **r)
    if parts & {"peer_train", "peer_test"}:
        peer, pmodel = load_peer()
        if "peer_train" in parts:
            for item in args.peer_train.split(","):
                b, mode = item.split(":")
                try:
                    if mode.startswith("plain"):
                        r = peer.bench_manual(pmodel, int(b), steps=args.steps, warmup=8 if "compile" in mode else 5,
                                              dev="cuda", channels_last=True, compile_="compile" in mode)
                    else:
                        r = peer.bench_train(pmodel, int(b), mode, steps=args.steps, warmup=5, dev="cuda")
                    r["mem_per_clip_gb"] = r["peak_mem_gb"] / int(b) if r.get("peak_mem_gb") else None
                except Exception as e:  # noqa: BLE001
                    r = dict(error=repr(e)[:300])
                torch.cuda.empty_cache()
                emit(kind="train", impl="mmaction2", batch=int(b), mode=mode, **r)
        if "peer_test" in parts:
            for mode in args.peer_test.split(","):
                try:
                    r = peer.bench_test(pmodel, 2, mode, reps=5, dev="cuda")
                except Exception as e:  # noqa: BLE001
                    r = dict(error=repr(e)[:300])
                torch.cuda.empty_cache()
                emit(kind="test30", impl="mmaction2", videos=2, mode=mode, **r)
    Path(args.out).write_text(json.dumps(RESULTS, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
