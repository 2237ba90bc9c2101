"""GPU throughput and memory of tpn's TPN R50 8x8 and mmaction2's own TPN, in one process.

Training: clips/s of a full step (forward with aux head + backward + clip-grad + SGD) on
8x224x224 uint8 clips already on the GPU (normalised inside the step), and peak memory.
Test: videos/s of the 30-view protocol (10 clips x 3 crops of 8x256x256).
The peer is driven by its own harness (../shared/peer/mmaction2_tpn_bench.py, copied into
.peer/ and carried to the device). One JSON line per measurement on stdout; after each one,
--out holds every record so far and `ratios` (see `ratios`), so a run cut short keeps its results.
Parts run in the order given (put slow compiles, e.g. `+cdt`, last).

    python benchmarks/bench_gpu.py --parts tpn_train,tpn_test,peer_train,peer_test --out results.json

Issue 18's comparison in one device call (one H100; carry .peer; not run yet: the parts before
`+cdt` are estimated at 6 minutes, and its tuning runs at its first step and may not finish in the
time left; what was measured is kept):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .peer/*.whl && \\
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && timeout 540 python3 benchmarks/bench_gpu.py \\
      --parts peer_train,peer_test,tpn_test,tpn_train --peer-train 32:amp_fp16,64:amp_fp16,32:plain_cl_compile \\
      --test bf16_cl_cg_fold --train 32:bf16_cl_compile,128:bf16_cl_cg,32:bf16_cl_compile_cp1,32:bf16_cl_compile_cdt \\
      --out $OUT/bench_gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_step, also when imported as benchmarks.bench_gpu

from tpn import bench  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.accel import Execution, make_eval_forward  # noqa: E402
from tpn.models.build import build_model  # noqa: E402
from tpn.models.info import measure  # noqa: E402
from train_step import make_train_step  # noqa: E402

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
CONFIG = ["tpn_r50_8x8_k400"]  # --config: tpn's model (the ratios are defined for this one)
RESULTS: list[dict] = []
OUT_PATH: list[Path] = []  # --out, rewritten after every record


def emit(**rec) -> None:
    RESULTS.append(rec)
    print(json.dumps(rec), flush=True)
    if OUT_PATH:
        OUT_PATH[0].write_text(json.dumps({"results": RESULTS, "ratios": ratios(RESULTS)}, indent=1))


def timed_peaks(fn, steps: int, warmup: int) -> tuple[float, float, float]:
    """(seconds for `steps` calls after `warmup`, their peak allocated GB, peak reserved GB).
    Under CUDA graphs the replayed steps allocate nothing: their working memory is reserved by
    the graph pool, so for those modes the reserved peak is the one that bounds the footprint."""
    bench.timed(fn, warmup, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    dt = bench.timed(fn, steps, device="cuda")
    return dt, torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def execution(mode: str) -> Execution:
    """Mode names: fp32 | bf16, +cl (channels_last_3d), +compile, +cg (compile with CUDA graphs),
    +cdt (with compile: inductor's coordinate-descent tuning, train.inductor_tuning),
    +cp1 (activation checkpointing of stage 1), +fold (BN folded into convs, test only; the folded
    weights held in bf16 unless +fp32w), +pad4/+pad8 (model.backbone.stem_pad_channels), +s2d
    (model.backbone.stem_2d), +abNN (with compile: train.activation_budget=0.NN), +fbn (train.fused_bn), +fbnb (experiment: fused_bn
    without the blocks' residual ConvBNs), +mm (with compile: test.gemm_tuning)."""
    compile_ = "reduce-overhead" if "cg" in mode else ("compile" in mode)
    budget = re.search(r"ab(\d\d)", mode)
    return Execution(torch.bfloat16 if "bf16" in mode else None, "cl" in mode, compile_,
                     inductor_tuning=bool(compile_) and "cdt" in mode,
                     activation_budget=int(budget.group(1)) / 100 if budget and compile_ else 1.0,
                     fused_bn="fbn" in mode, gemm_tuning=bool(compile_) and "mm" in mode)


def model_overrides(mode: str) -> list[str]:
    sets = ["model.backbone.with_cp=[1]"] if "cp1" in mode else []
    sets += [f"model.backbone.stem_pad_channels={c}" for c in (4, 8) if f"pad{c}" in mode]
    return sets + (["model.backbone.stem_2d=true"] if "s2d" in mode else [])


def tpn_train(batch: int, mode: str, steps: int) -> dict:
    torch.manual_seed(0)
    cfg = load_config(CONFIG[0], model_overrides(mode))
    model = build_model(cfg).cuda().train()
    ex = execution(mode)
    step = make_train_step(model, cfg.data.mean, cfg.data.std, ex, cfg.train, lr=0.01)
    if "fbnb" in mode:  # experiment: the kernels only where no residual is added (before the first, compiling, call)
        for m in model.modules():
            if hasattr(m, "conv3"):
                m.conv3.fused_bn = False
    x8 = torch.randint(0, 255, (batch, 3, 8, 224, 224), dtype=torch.uint8, device="cuda")
    labels = torch.arange(batch, device="cuda") % 400
    torch.cuda.reset_peak_memory_stats()
    first = bench.timed(lambda: step(x8, labels), 1, device="cuda")
    first_mem = torch.cuda.max_memory_allocated() / 2**30  # compilation, tuning, graph recording
    dt, mem, reserved = timed_peaks(lambda: step(x8, labels), steps, warmup=3 if ex.compile else 2)
    return dict(clips_per_s=batch * steps / dt, step_ms=1000 * dt / steps, peak_mem_gb=mem,
                mem_per_clip_gb=mem / batch, peak_reserved_gb=reserved, reserved_per_clip_gb=reserved / batch,
                first_step_peak_mem_gb=first_mem, first_step_s=first)


@torch.no_grad()
def tpn_test(videos: int, mode: str, reps: int) -> dict:
    cfg = load_config(CONFIG[0], model_overrides(mode))
    model = build_model(cfg).cuda().eval()
    fwd = make_eval_forward(model, cfg.data.mean, cfg.data.std, execution(mode), fold_bn="fold" in mode,
                            low_precision_weights="fp32w" not in mode)
    x8 = torch.randint(0, 255, (videos, 30, 3, 8, 256, 256), dtype=torch.uint8, device="cuda")

    def run():
        logits = fwd(x8.flatten(0, 1))
        return F.softmax(logits.float(), -1).view(videos, 30, -1).mean(1)

    run()
    dt, mem, reserved = timed_peaks(run, reps, warmup=1)
    return dict(videos_per_s=videos * reps / dt, peak_mem_gb=mem, peak_reserved_gb=reserved)


def load_peer():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".peer"))
    import mmaction2_tpn_bench as peer

    model, _ = peer.build(peer.find_config())
    return peer, model.cuda()


PEER_OWN_STEP = ("fp32", "amp_fp16", "amp_bf16")  # mmaction2's own train_step; plain_* run in our loop


def _best(records: list[dict], kind: str, impl: str, key: str, batch: int | None = None,
          modes: tuple[str, ...] | None = None) -> dict | None:
    found = [r for r in records if r.get("kind") == kind and r.get("impl") == impl and r.get(key)
             and (batch is None or r.get("batch") == batch) and (modes is None or r.get("mode") in modes)]
    return max(found, key=lambda r: r[key]) if found else None


def _ratio(a: dict | None, b: dict | None, key: str) -> dict | None:
    if not (a and b):
        return None
    side = lambda r: {k: r[k] for k in ("mode", "batch", key) if k in r}  # noqa: E731
    return {"ratio": round(a[key] / b[key], 3), "tpn": side(a), "mmaction2": side(b)}


def ratios(records: list[dict]) -> dict:
    """tpn / mmaction2 from the records so far (a ratio with a side not measured is left out):
    training (best clips/s of tpn, any batch and mode, over mmaction2's best through its own
    train_step), compiled_loop_b32 (tpn's best at batch 32 over mmaction2's model in our compiled
    bf16 loop, plain_cl_compile, at batch 32), compiled_loop_b32_same_mode (tpn bf16_cl_compile
    over the same), test30 (best videos/s over best), and per tpn mode at batch 32 its memory per
    clip over mmaction2 AMP fp16's at batch 32: steady peak allocated, and reserved (the bound
    under CUDA graphs, whose replays allocate nothing); mmaction2's peak spans its warm-up steps."""
    out = {
        "training": _ratio(_best(records, "train", "tpn", "clips_per_s"),
                           _best(records, "train", "mmaction2", "clips_per_s", modes=PEER_OWN_STEP), "clips_per_s"),
        "compiled_loop_b32": _ratio(_best(records, "train", "tpn", "clips_per_s", batch=32),
                                    _best(records, "train", "mmaction2", "clips_per_s", 32, ("plain_cl_compile",)),
                                    "clips_per_s"),
        "compiled_loop_b32_same_mode": _ratio(
            _best(records, "train", "tpn", "clips_per_s", 32, ("bf16_cl_compile",)),
            _best(records, "train", "mmaction2", "clips_per_s", 32, ("plain_cl_compile",)), "clips_per_s"),
        "test30": _ratio(_best(records, "test30", "tpn", "videos_per_s"),
                         _best(records, "test30", "mmaction2", "videos_per_s"), "videos_per_s"),
    }
    peer = _best(records, "train", "mmaction2", "mem_per_clip_gb", 32, ("amp_fp16",))
    memory = {r["mode"]: {"allocated": round(r["mem_per_clip_gb"] / peer["mem_per_clip_gb"], 3),
                          "reserved": round(r["reserved_per_clip_gb"] / peer["mem_per_clip_gb"], 3),
                          "clips_per_s": r["clips_per_s"]}
              for r in records if peer and r.get("kind") == "train" and r.get("impl") == "tpn"
              and r.get("batch") == 32 and r.get("mem_per_clip_gb")}
    if memory:
        out["memory_per_clip_b32_vs_mmaction2_amp"] = {"mmaction2_gb": peer["mem_per_clip_gb"], **memory}
    return {k: v for k, v in out.items() if v}


def guarded(fn, *args, **kw) -> dict:
    """fn's result, or its error as a result; the start time goes to stderr (a run cut short shows
    what it was measuring)."""
    shown = [a for a in args if isinstance(a, (int, str))]
    print(f"{time.strftime('%H:%M:%S')} start {fn.__name__} {shown}", file=sys.stderr, flush=True)
    try:
        return fn(*args, **kw)
    except Exception as e:  # noqa: BLE001 - an OOM at a big batch is a result too
        return dict(error=repr(e)[:300])
    finally:
        torch.cuda.empty_cache()
        torch._dynamo.reset()


def peer_train(peer, pmodel, batch: int, mode: str, steps: int) -> dict:
    if mode.startswith("plain"):
        r = peer.bench_manual(pmodel, batch, steps=steps, warmup=8 if "compile" in mode else 5, dev="cuda",
                              channels_last=True, compile_="compile" in mode)
    else:
        r = peer.bench_train(pmodel, batch, mode, steps=steps, warmup=5, dev="cuda")
    r["mem_per_clip_gb"] = r["peak_mem_gb"] / batch if r.get("peak_mem_gb") else None
    return r


def run_part(part: str, args, peer_state: list) -> None:
    if part == "tpn_train":
        for item in args.train.split(","):
            b, mode = item.split(":")
            emit(kind="train", impl="tpn", batch=int(b), mode=mode, **guarded(tpn_train, int(b), mode, args.steps))
    elif part == "tpn_test":
        for mode in args.test.split(","):
            emit(kind="test30", impl="tpn", videos=2, mode=mode, **guarded(tpn_test, 2, mode, reps=5))
    elif part in ("peer_train", "peer_test"):
        if not peer_state:
            peer_state.extend(load_peer())
        peer, pmodel = peer_state
        if part == "peer_train":
            for item in args.peer_train.split(","):
                b, mode = item.split(":")
                emit(kind="train", impl="mmaction2", batch=int(b), mode=mode,
                     **guarded(peer_train, peer, pmodel, int(b), mode, args.steps))
        else:
            for mode in args.peer_test.split(","):
                emit(kind="test30", impl="mmaction2", videos=2, mode=mode,
                     **guarded(peer.bench_test, pmodel, 2, mode, reps=5, dev="cuda"))
    else:
        raise SystemExit(f"--parts: unknown part {part!r} (tpn_train, tpn_test, peer_train, peer_test)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="tpn_train,tpn_test,peer_train,peer_test", help="run in this order")
    ap.add_argument("--train", default="8:fp32,8:bf16_cl,32:fp32,32:bf16_cl,32:bf16_cl_compile,64:bf16_cl_compile",
                    help="batch:mode pairs for tpn")
    ap.add_argument("--peer-train", default="8:amp_fp16,32:amp_fp16,64:amp_fp16",
                    help="batch:mode pairs for mmaction2 (modes fp32, amp_fp16, plain_cl, plain_cl_compile)")
    ap.add_argument("--test", default="fp32,bf16_cl,bf16_cl_compile")
    ap.add_argument("--peer-test", default="amp_fp16")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--config", default=CONFIG[0], help="tpn's model for tpn_train / tpn_test (e.g. a TSM-TPN config)")
    ap.add_argument("--out", default="bench_gpu.json")
    args = ap.parse_args()
    OUT_PATH.append(Path(args.out))
    CONFIG[0] = args.config
    torch.backends.cudnn.benchmark = True
    cfg = load_config(args.config)
    info = measure(cfg)
    emit(kind="env", machine=bench.machine_info(), tpn_params=info["params_total"],
         fwd_flops_per_view_224=info["flops"], config=args.config, command=" ".join(sys.argv))
    peer_state: list = []
    for part in args.parts.split(","):
        run_part(part, args, peer_state)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
