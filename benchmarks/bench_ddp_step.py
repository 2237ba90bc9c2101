"""The DDP training step alone, on clips already on the GPU: how close N GPUs get to N x one GPU
before any data loading. Launch with torchrun, once with 1 and once with N processes:

    torchrun --nproc-per-node 2 benchmarks/bench_ddp_step.py --batch 32 --steps 60 --out ddp_step_2.json

The step is the engine's: `tpn.accel.make_forward` (uint8 in, on-device normalisation, bf16,
channels_last_3d, torch.compile) on the shipped tpn_r50_8x8_k400 model with its aux head, wrapped
in DistributedDataParallel, backward, grad clipping and fused SGD, no host synchronisation
inside the timed loop. Rank 0 writes total clips/s over all processes.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from tpn.accel import Execution, make_forward
from tpn.bench import machine_info, timed
from tpn.config import load_config
from tpn.models.build import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="tpn_r50_8x8_k400")
    ap.add_argument("--batch", type=int, default=32, help="clips per GPU")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--bucket-mb", type=int, default=25, help="DDP bucket_cap_mb")
    ap.add_argument("--bucket-view", type=int, default=1, help="DDP gradient_as_bucket_view (1/0)")
    ap.add_argument("--static-graph", type=int, default=0, help="DDP static_graph (1/0)")
    ap.add_argument("--out", default="ddp_step.json")
    args = ap.parse_args()
    world, rank, local = (int(os.environ.get(k, d)) for k, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    dev = torch.device("cuda", local)
    torch.cuda.set_device(dev)
    if world > 1:
        dist.init_process_group("nccl")
    torch.backends.cudnn.benchmark = True
    cfg = load_config(args.config)
    torch.manual_seed(0)
    # channels_last_3d before DDP: its gradient buckets take the parameters' strides
    model = build_model(cfg).to(dev).train().to(memory_format=torch.channels_last_3d)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[local], bucket_cap_mb=args.bucket_mb,
                                              gradient_as_bucket_view=bool(args.bucket_view),
                                              static_graph=bool(args.static_graph)) if world > 1 else model
    fwd = make_forward(net, cfg.data.mean, cfg.data.std, Execution(torch.bfloat16, True, True), with_labels=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4, fused=True)
    t, s = cfg.data.clip_len, cfg.data.crop_size
    x = torch.randint(0, 256, (args.batch, 3, t, s, s), dtype=torch.uint8, device=dev)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, cfg.model.head.num_classes, (args.batch,), device=dev)

    def step() -> None:
        loss = fwd(x, y)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    timed(step, args.warmup, device=dev)
    if world > 1:
        dist.barrier()
    elapsed = timed(step, args.steps, device=dev)
    if rank == 0:
        res = {"world": world, "batch_per_gpu": args.batch, "steps": args.steps, "bucket_cap_mb": args.bucket_mb,
               "gradient_as_bucket_view": bool(args.bucket_view), "static_graph": bool(args.static_graph),
               "clips_per_s": round(world * args.batch * args.steps / elapsed, 1), "machine": machine_info()}
        print(json.dumps(res))
        with open(args.out, "w") as f:
            json.dump(res, f)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
