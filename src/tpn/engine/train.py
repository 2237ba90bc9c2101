"""The training loop, read top to bottom in `train`: set-up, resume, epochs, validation.

SGD (momentum, nesterov option, weight decay with optional BN/bias exemption), linear
learning-rate scaling with the total batch, linear warm-up then step or cosine decay
(a pure function of the iteration, so resuming needs no scheduler object), gradient
accumulation and clipping, bf16 autocast + channels_last_3d (+ torch.compile) on CUDA,
DDP under torchrun, validation every N epochs, atomic checkpoints with exact resume, a
checkpoint and a clean stop on SIGTERM (`tpn.engine.stop`), no checkpoint of non-finite state.
Logs, metrics and plots: `tpn.engine.report`; resume and pruning: `tpn.engine.checkpoint`.
"""
from __future__ import annotations

import logging
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from tpn.accel import Execution, execution, make_forward, to_channels_last
from tpn.checkpoint import FORMAT, load_state_dict_strict, save_atomic
from tpn.config import Config, dump_config, to_dict
from tpn.convert.inflate import inflate_2d_into
from tpn.convert.weights import init_from
from tpn.data.datasets import REPLACEMENTS, NoReadableVideo, VideoDataset, build_dataset, read_report
from tpn.data.labels import resolve_num_classes
from tpn.data import nvdec
from tpn.engine import decoding
from tpn.data.loader import build_loader
from tpn.data.transforms import apply_augment
from tpn.engine import distributed as D, workdir
from tpn.engine.checkpoint import find_resume, prune, prune_after_epoch, rng_state, set_rng_state, trainable
from tpn.engine.evaluate import make_eval_loader, metrics, predict_probs
from tpn.engine.report import MetricsLog, plot_curves, setup_logging
from tpn.engine.stop import StopSignal
from tpn.errors import TpnError, listing
from tpn.models.build import build_model

log = logging.getLogger("tpn.train")

PREFETCH = 4  # batches each training loader worker keeps ready


# ------------------------------------------------------------------ learning rate
def base_lr(cfg: Config, world: int) -> float:
    total = cfg.train.batch_size * world * cfg.train.accum_steps
    return cfg.train.lr * total / cfg.train.lr_batch_size


def lr_at(cfg: Config, it: int, iters_per_epoch: int, lr0: float) -> float:
    """Learning rate at optimiser step `it` (0-based)."""
    t = cfg.train
    epoch = it / iters_per_epoch
    warm = t.warmup_epochs * iters_per_epoch
    if it < warm:
        return lr0 * (0.1 + 0.9 * it / warm)
    if t.schedule == "cosine":
        total = t.epochs * iters_per_epoch
        progress = (it - warm) / max(1, total - warm)
        return lr0 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return lr0 * t.gamma ** sum(epoch >= m for m in t.milestones)


def param_groups(model: nn.Module, cfg: Config) -> list[dict]:
    """Trainable parameters in SGD groups: with BN/bias exemption (train.decay_norm_and_bias
    false) a group without weight decay; with train.backbone_lr_mult != 1 the backbone's groups
    apart, their "lr_mult" scaling the scheduled lr (saved in the optimiser state: a resume keeps it)."""
    mult = cfg.train.backbone_lr_mult
    parts = [(model.backbone, mult), *((m, 1.0) for n, m in model.named_children() if n != "backbone")] \
        if mult != 1.0 else [(model, 1.0)]
    groups = []
    for part, lr_mult in parts:
        decay, no_decay = [], []
        for m in part.modules():
            for name, p in m.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                is_norm = isinstance(m, nn.modules.batchnorm._NormBase)
                exempt = not cfg.train.decay_norm_and_bias and (is_norm or name == "bias")
                (no_decay if exempt else decay).append(p)
        extra = {"lr_mult": lr_mult} if mult != 1.0 else {}
        groups.append({"params": decay, **extra})
        if not cfg.train.decay_norm_and_bias:
            groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
    if mult != 1.0:  # one group per multiplier and decay: the neck's and the heads' merged
        merged: dict = {}
        for g in groups:
            key = (g["lr_mult"], g.get("weight_decay"))
            merged.setdefault(key, {**g, "params": []})["params"] += g["params"]
        groups = list(merged.values())
    return groups


# ------------------------------------------------------------------ what a run holds
@dataclass
class Data:
    train_set: VideoDataset
    val_set: VideoDataset | None
    sampler: D.ShardedSampler
    loader: DataLoader
    iters_per_epoch: int
    videos_per_batch: int  # the sampler counts videos: train.batch_size // data.clips_per_decode
    stage: nvdec.DecodeStage | None = None  # GPU decoding (data.decoder), None: the loader decodes all


@dataclass
class Run:
    cfg: Config
    d: D.Dist
    work_dir: Path
    data: Data
    model: nn.Module  # the bare model: checkpoints and validation
    net: nn.Module  # the model DDP wraps (or the model itself in one process): training
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    params: list[torch.Tensor]
    lr0: float
    ex: Execution  # mixed precision, channels_last_3d, compile
    forward: object = None  # fn(x_uint8, labels) -> losses
    eval_forward: object = None  # fn(x_uint8) -> logits
    mlog: MetricsLog | None = None
    stop: StopSignal | None = None  # SIGTERM, read between steps
    last_ckpt: Path | None = None  # the newest resumable checkpoint saved (or resumed from)
    train_top1: float | None = None  # the last epoch's training top-1 (train_one_epoch)
    epoch_hits: torch.Tensor | None = None  # this epoch's training top-1 hits so far (a device scalar) ...
    epoch_seen: int = 0  # ... of so many clips: what an in-epoch checkpoint carries on
    data_wait_s: float = 0.0  # the last epoch's time waiting for batches (train_one_epoch)
    stopped: str | None = None  # what a stop by SIGTERM saved


@dataclass
class Progress:
    """Where the run stands; with the config, the scheduler's and the sampler's whole state."""
    epoch: int = 0  # the epoch to start at
    iter_in_epoch: int = 0  # optimiser steps of that epoch already done
    global_iter: int = 0
    best: float = -1.0  # best validation top-1 so far
    top1_so_far: tuple = (0, 0)  # the resumed epoch's training top-1 hits and clips before it, all ranks summed


# ------------------------------------------------------------------ set-up
def start(work_dir: Path, device: str, resume: str | None, overwrite: bool, break_lock: bool) -> tuple[D.Dist, dict]:
    """Process group; on rank 0 the work dir's lock and the earlier-run check (`tpn.engine.workdir`),
    whose outcome every rank gets, so that none waits at a collective for a rank that stopped;
    logging. Returns the Dist and the lock (empty on other ranks)."""
    d = D.setup(device)
    me, notes, error = {}, [], None
    if d.main:
        try:
            me, notes = workdir.lock(work_dir, break_lock)
            partial = workdir.remove_partial_saves(work_dir)
            notes += [f"removed {listing(partial)}: checkpoint saves cut short by a kill"] if partial else []
            deleted = workdir.check_earlier_run(work_dir, resume, overwrite)
            notes += [f"--overwrite: deleted the earlier run's {listing(deleted)}"] if deleted else []
        except TpnError as e:
            error = str(e)
    error = D.gather_objects(error, d)[0]
    if error:
        if me:
            workdir.unlock(work_dir, me)
        raise TpnError(error)
    setup_logging(work_dir, d.main)
    for note in notes:
        log.warning(note)
    return d, me


def seed_everything(cfg: Config, d: D.Dist) -> None:
    t = cfg.train
    torch.manual_seed(t.seed + d.rank)
    np.random.seed(t.seed + d.rank)
    random.seed(t.seed + d.rank)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = t.cudnn_benchmark


def build_data(cfg: Config, d: D.Dist, work_dir: Path) -> Data:
    t = cfg.train
    report = work_dir / "bad_videos.jsonl"
    setup = decoding.plan_decoding(cfg.data, d.device, log_choice=log.info if d.main else (lambda *a: None))
    train_set = build_dataset(cfg.data, "train", report_path=report, seed=t.seed, decoder=setup.decoder)
    val_set = build_dataset(cfg.data, "val", report_path=report) if t.val_interval > 0 and cfg.data.val_list else None
    sampler = D.ShardedSampler(len(train_set), d.rank, d.world, shuffle=True, seed=t.seed)
    # persistent workers (no re-spawn each epoch); their seeds come from the loader's own
    # generator, not the global RNG, and augmentation from (seed, epoch, index): exact resume
    loader = build_loader(train_set, t.batch_size, cfg.data.num_workers, sampler=sampler,
                          pin_memory=d.device.type == "cuda", drop_last=True, persistent_workers=True, seed=t.seed,
                          prefetch_factor=PREFETCH)
    videos_per_batch = cfg.videos_per_batch  # the sampler counts videos
    iters_per_epoch = len(sampler) // videos_per_batch // t.accum_steps
    if iters_per_epoch < 1:
        raise TpnError(f"{cfg.data.train_list}: {len(train_set)} videos are fewer than one batch "
                       f"({videos_per_batch} x {d.world} processes x {t.accum_steps} accumulation steps)")
    # a timed share skips the batches already queued at the old one (the workers' prefetch and the stage's)
    in_flight = max(1, cfg.data.num_workers) * PREFETCH + 4
    stage = decoding.build_stage(setup, train_set, cfg.data, d.device, cfg.data.num_workers, t.batch_size, in_flight,
                                 log_choice=log.info if d.main else (lambda *a: None))
    return Data(train_set, val_set, sampler, loader, iters_per_epoch, videos_per_batch, stage)


def build_training(cfg: Config, d: D.Dist, work_dir: Path, data: Data, from_scratch: bool) -> Run:
    """The model on its device, the optimiser and the loss scaler (forwards: `make_forwards`).

    `from_scratch`: no checkpoint to resume, so `model.backbone.pretrained2d` (if set) is inflated
    into the backbone; a resumed run never reads the 2D file.
    """
    t = cfg.train
    cuda = d.device.type == "cuda"
    model = build_model(cfg)
    if from_scratch and cfg.model.init_from:
        r = init_from(model, cfg.model.init_from)
        log.info("model initialised from %s (%s): %d of %d tensors loaded%s", cfg.model.init_from, r["format"],
                 r["loaded"], r["total"], f"; re-initialised {listing(r['reinit'])} ({r['why']})" if r["reinit"] else "")
    if from_scratch and cfg.model.backbone.pretrained2d:
        r = inflate_2d_into(model.backbone, cfg.model.backbone.pretrained2d)
        log.info("backbone initialised from the 2D ResNet %s (%d tensors inflated, %d copied)",
                 cfg.model.backbone.pretrained2d, r["inflated"], r["copied"])
    model = model.to(d.device)
    if t.sync_bn and d.enabled and cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif t.sync_bn and d.enabled:
        log.warning("train.sync_bn: torch's SyncBatchNorm runs on GPUs only; on CPU BN statistics stay per process")
    ex = execution(t, d.device)
    if ex.channels_last:  # before the optimiser and DDP see the parameters
        model = to_channels_last(model)
    groups = param_groups(model, cfg)
    lr0 = base_lr(cfg, d.world)
    opt = torch.optim.SGD(groups, lr=lr0, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
                          weight_decay=t.weight_decay, fused=cuda)
    scaler = torch.amp.GradScaler("cuda", enabled=ex.loss_scaling)
    params = [p for g in groups for p in g["params"]]
    return Run(cfg, d, work_dir, data, model, model, opt, scaler, params, lr0, ex)


def _by(run: Run) -> str:
    """Which signal stopped the run, for the messages (SIGTERM, SIGINT)."""
    return run.stop.label if run.stop else "SIGTERM"


def config_changes(saved: dict | None, now: dict, prefix: str) -> list[str]:
    """`prefix.key: saved -> now` for each leaf of section `prefix` that differs (none when the
    checkpoint carries no config)."""
    if saved is None or prefix not in saved:
        return []

    def leaves(tree, path):
        if isinstance(tree, dict):
            return {k: v for key, sub in tree.items() for k, v in leaves(sub, f"{path}.{key}").items()}
        return {path: tree}

    old, new = leaves(saved[prefix], prefix), leaves(now[prefix], prefix)
    return [f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


def restore(run: Run, ckpt: dict, path: Path) -> Progress:
    """Model, optimiser, scaler and RNG state from a training checkpoint; returns where it stopped."""
    d, ipe = run.d, run.data.iters_per_epoch
    saved, now = ckpt.get("label_names"), run.data.train_set.label_names
    if saved and now and list(saved) != list(now):
        i = next((i for i, (a, b) in enumerate(zip(saved, now)) if a != b), min(len(saved), len(now)))
        there, here = (repr(x[i]) if i < len(x) else "none" for x in (saved, now))
        raise TpnError(f"{path}: trained with another label map ({len(saved)} classes there, {len(now)} here; class "
                       f"{i} is {there} there, {here} here): resume with the run's own label map, or start a new "
                       "run from these weights with model.init_from")
    try:
        load_state_dict_strict(run.model, ckpt["state_dict"], str(path))
    except TpnError as e:
        changed = config_changes(ckpt.get("config"), to_dict(run.cfg), "model")
        if not changed:
            raise
        raise TpnError(f"{path}: this run's config differs from the checkpoint's in {listing(changed)}: resume with "
                       f"the run's own config ({run.work_dir / 'config.yaml'}); {e}") from None
    mults = [g.get("lr_mult", 1.0) for g in run.opt.param_groups]
    try:
        run.opt.load_state_dict(ckpt["optimizer"])
        if [g.get("lr_mult", 1.0) for g in run.opt.param_groups] != mults:
            raise ValueError("another train.backbone_lr_mult")
    except ValueError as e:  # other groups: another lr mult, decay exemption or frozen stages
        raise TpnError(f"{path}: its optimiser state does not fit this config's parameter groups ({e}): resume "
                       "with the run's own config (config.yaml in its work dir; train.backbone_lr_mult, "
                       "train.decay_norm_and_bias and model.backbone.frozen_stages shape the groups)") from None
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    prog = Progress(ckpt["epoch"], ckpt["iter_in_epoch"], ckpt["global_iter"], ckpt.get("best_top1", -1.0),
                    tuple(ckpt.get("epoch_top1_counts", (0, 0))))
    set_rng_state(ckpt["rng"][d.rank] if d.rank < len(ckpt["rng"]) else ckpt["rng"][0])
    saved_world = ckpt.get("world_size", d.world)
    if saved_world != d.world or ckpt.get("iters_per_epoch", ipe) != ipe:
        log.warning("resuming a run of %d processes with %d: training continues, but not bit-exactly "
                    "(the data order and the learning-rate scaling change)", saved_world, d.world)
    log.info("resumed from %s (epoch %d, iteration %d of %d)", path, prog.epoch + 1, prog.iter_in_epoch, ipe)
    return prog


def make_forwards(run: Run) -> None:
    """DDP wrapping and the compiled training / plain evaluation forwards."""
    d, mean, std = run.d, run.cfg.data.mean, run.cfg.data.std
    if d.enabled:
        ids = [d.device.index] if d.device.type == "cuda" else None
        # gradients live in the all-reduce buckets: no copy in or out (measured: benchmarks/bench_ddp_step.py)
        run.net = nn.parallel.DistributedDataParallel(run.model, device_ids=ids, gradient_as_bucket_view=True)
    run.forward = make_forward(run.net, mean, std, run.ex, with_labels=True)
    run.eval_forward = make_forward(run.model, mean, std, replace(run.ex, compile=False))


# ------------------------------------------------------------------ the loop
def train(cfg: Config, work_dir: str | Path, resume: str | None = None, device: str = "auto",
          max_iters: int | None = None, overwrite: bool = False, break_lock: bool = False) -> dict:
    """Train `cfg`; returns a summary dict. `max_iters` stops early (for tests). A work dir holding
    checkpoints needs `resume` or `overwrite` (`tpn.engine.workdir`); the lock is held throughout.
    On SIGTERM the run saves a checkpoint at the next step boundary and returns early, the summary's
    "stopped" saying what it saved (the CLI then exits with 143)."""
    work_dir = Path(work_dir)
    if overwrite:  # the label map and the lists first: a run that cannot start deletes nothing
        resolve_num_classes(cfg)
    d, me = start(work_dir, device, resume, overwrite, break_lock)
    stop = None
    try:
        stop = StopSignal(d)
        summary = run_training(cfg, d, work_dir, resume, max_iters, stop)
    finally:
        if me:
            workdir.unlock(work_dir, me)
        if stop is not None:
            stop.close()
    if summary.get("stopped") and d.main:
        log.warning("%s; the lock %s is released", summary["stopped"], work_dir / workdir.LOCK)
    return summary


def run_training(cfg: Config, d: D.Dist, work_dir: Path, resume: str | None, max_iters: int | None,
                 stop: StopSignal | None = None) -> dict:
    ckpt, ckpt_path = find_resume(work_dir, resume)  # first: a wrong --resume fails before any work
    cfg = resolve_num_classes(cfg)  # the label map and the lists against the head, before any training
    seed_everything(cfg, d)
    t = cfg.train
    data = build_data(cfg, d, work_dir)
    run = build_training(cfg, d, work_dir, data, from_scratch=ckpt is None)
    run.stop = stop
    prog = Progress()
    if ckpt is not None:
        prog = restore(run, ckpt, ckpt_path)
        run.last_ckpt = ckpt_path
        if prog.epoch >= t.epochs and d.main:
            log.warning("%s ends at epoch %d of train.epochs %d: nothing to train (to train on, raise it, "
                        "e.g. --set train.epochs=%d)", ckpt_path, prog.epoch, t.epochs, prog.epoch + 1)
    elif resume == "auto":
        log.info("no training checkpoint in %s: starting from scratch", work_dir)
    if d.main:  # after the resume: a checkpoint that does not fit leaves the run's own config.yaml as it was
        (work_dir / "config.yaml").write_text(dump_config(cfg))
    make_forwards(run)
    run.mlog = MetricsLog(work_dir, d.main, start_iter=prog.global_iter)
    if ckpt is not None and ckpt.get("val_pending") and data.val_set is not None:
        with torch.random.fork_rng(devices=[]):  # the cut validation drew the loader's seed already: exact resume
            top1 = validate_and_keep_best(run, prog, prog.epoch - 1)
        if top1 is None:  # SIGTERM again
            run.stopped = f"{_by(run)}: stopped during epoch {prog.epoch}'s validation again; {ckpt_path} resumes it"
            return finish(run, prog, {"work_dir": str(work_dir), "epochs": [], "stopped": run.stopped}, time.time())

    summary = {"work_dir": str(work_dir), "epochs": []}
    t_start = time.time()
    first_epoch, first_iter = prog.epoch, prog.iter_in_epoch
    for epoch in range(first_epoch, t.epochs):
        t_epoch = time.time()
        clips, stopped, warm = train_one_epoch(run, prog, epoch, first_iter if epoch == first_epoch else 0, max_iters)
        if stopped:
            break
        t_end = time.time()  # the epoch's last step logged its loss: the device is done
        epoch_time = t_end - t_epoch
        erec = {"kind": "epoch", "epoch": epoch + 1, "iter": prog.global_iter, "time_s": epoch_time,
                "clips_per_s": clips * d.world / epoch_time}
        if run.train_top1 is not None:
            erec.update(train_top1=run.train_top1)
        erec.update(data_wait_s=round(run.data_wait_s, 2))  # rank 0's: the step waiting for batches
        if data.stage is not None:
            erec.update(decode=data.stage.stats())
        if warm is not None:  # time and rate apart from the first steps (see WARMUP_STEPS)
            erec.update(warmup_s=warm[1] - t_epoch,
                        steady_clips_per_s=(clips - warm[0]) * d.world / max(1e-9, t_end - warm[1]),
                        steady_data_wait=round(min(1.0, (run.data_wait_s - warm[2]) / max(1e-9, t_end - warm[1])), 3))
        pending = False  # the epoch's validation cut short by SIGTERM: the resume runs it first
        if data.val_set is not None and ((epoch + 1) % t.val_interval == 0 or epoch + 1 == t.epochs):
            top1 = validate_and_keep_best(run, prog, epoch)
            if top1 is None:
                pending = True
            else:
                erec.update(val_top1=top1)
        run.mlog.write(erec)
        summary["epochs"].append(erec)
        save_checkpoint(run, prog, work_dir / f"epoch_{epoch + 1:04d}.pth", epoch + 1, 0, val_pending=pending)
        if d.main:
            prune_after_epoch(work_dir, t.keep_last)
            wait = min(1.0, run.data_wait_s / max(1e-9, epoch_time))
            log.info("epoch %d done in %.1f s: %s%s; waited for data %.0f%% of it", epoch + 1, epoch_time,
                     _rate_text(erec), f"; training top-1 {100 * erec['train_top1']:.2f}%" if "train_top1" in erec
                     else "", 100 * wait)
            steady_wait = erec.get("steady_data_wait", wait)
            if epoch == first_epoch and steady_wait >= WAIT_HINT:  # past the warm-up: workers starting, compiling
                log.info("the step waited for data %.0f%% of the epoch after its warm-up: the loader is the bound; the "
                         "ways to feed it (data.num_workers, `tpn data prepare`, data.decoder, "
                         "data.augment_on_device) are in docs/data.md, 'Choosing a decoding path'", 100 * steady_wait)
        if pending:
            run.stopped = (f"{_by(run)}: stopped during epoch {epoch + 1}'s validation, saved {run.last_ckpt} "
                           f"(--resume auto validates epoch {epoch + 1}, then continues)")
            break
        if epoch + 1 < t.epochs and run.stop is not None and run.stop.requested():
            run.stopped = f"{_by(run)}: stopped after epoch {epoch + 1}, saved {run.last_ckpt} (--resume auto continues)"
            break
    summary["stopped"] = run.stopped
    return finish(run, prog, summary, t_start)


# The share of the first epoch's steady part (after WARMUP_STEPS) spent waiting for batches above which the
# log names the ways to feed the step.
WAIT_HINT = 0.3

# Steps of an epoch timed as warm-up, apart from the steady rate: loader workers starting and
# filling their queue, and in the first epoch compilation and cuDNN's algorithm search.
WARMUP_STEPS = 5


def _rate_text(erec: dict) -> str:
    if "steady_clips_per_s" not in erec:
        return f"{erec['clips_per_s']:.1f} clips/s"
    return (f"{erec['steady_clips_per_s']:.1f} clips/s steady after {erec['warmup_s']:.1f} s of warm-up "
            f"({erec['clips_per_s']:.1f} clips/s over the epoch)")


def train_one_epoch(run: Run, prog: Progress, epoch: int, first: int,
                    max_iters: int | None) -> tuple[int, bool, tuple[int, float] | None]:
    """Steps `first`..end of `epoch`; returns (clips seen by this process, stopped by `max_iters` or
    SIGTERM, (clips, time) when the warm-up steps were done, or None for an epoch of one step)."""
    cfg, d, t, data = run.cfg, run.d, run.cfg.train, run.data
    data.train_set.set_epoch(epoch)
    data.sampler.set_epoch(epoch, start=first * data.videos_per_batch * t.accum_steps)
    run.model.train()
    window = _Window(d.device)
    # training top-1 hits, read once an epoch; a resumed epoch goes on from its checkpoint's counts (held by
    # rank 0: `_train_top1`'s ratio of means over the ranks is the ratio of their sums)
    hits0, seen0 = prog.top1_so_far if first and d.main else (0, 0)
    correct = torch.full((), int(hits0), dtype=torch.long, device=d.device)
    run.epoch_hits, run.epoch_seen = correct, int(seen0)
    bar = _progress_bar(run, epoch, first)
    batches = _Waited(data.stage.epoch(data.loader) if data.stage is not None else iter(data.loader))
    clips, warm = 0, None
    warm_steps = min(WARMUP_STEPS, (data.iters_per_epoch - first) // 2)
    for it in range(first, data.iters_per_epoch):
        lr = lr_at(cfg, prog.global_iter, data.iters_per_epoch, run.lr0)
        for g in run.opt.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        loss_step, n = train_step(run, batches, correct)
        clips += n
        run.epoch_seen += n
        window.loss += loss_step
        window.steps += 1
        prog.global_iter += 1
        if warm_steps and it + 1 - first == warm_steps:
            if d.device.type == "cuda":
                torch.cuda.synchronize(d.device)  # once an epoch: the warm-up's end, not its launch
            warm = (clips, time.time(), batches.wait_s)
        last = it == data.iters_per_epoch - 1
        if prog.global_iter % t.log_interval == 0 or last:
            _log_step(run, window, bar, epoch, it, prog.global_iter, lr, clips, batches.wait_s)
        if bar is not None:
            bar.update(1)
        if t.ckpt_interval_iters and prog.global_iter % t.ckpt_interval_iters == 0 and not last:
            save_in_epoch(run, prog, epoch, it + 1)
        if not last and run.stop is not None and run.stop.requested():  # the epoch's end asks after its save
            if run.last_ckpt != run.work_dir / f"iter_{prog.global_iter:08d}.pth":
                save_in_epoch(run, prog, epoch, it + 1)
            run.stopped = (f"{_by(run)}: stopped at epoch {epoch + 1} iteration {it + 1} of {data.iters_per_epoch}, "
                           f"saved {run.last_ckpt} (--resume auto continues)")
        if run.stopped or max_iters is not None and prog.global_iter >= max_iters:
            if bar is not None:
                bar.close()
            return clips, True, warm
    if bar is not None:
        bar.close()
    run.train_top1 = _train_top1(correct, run.epoch_seen, d)
    run.data_wait_s = batches.wait_s
    return clips, False, warm


def _train_top1(correct: torch.Tensor, clips: int, d: D.Dist) -> float | None:
    """Top-1 of the epoch's training clips as the model saw them (augmented, in train mode, each
    scored by the weights before its own step), over all ranks; None for an epoch that did not run."""
    total = torch.tensor([float(correct), float(clips)], dtype=torch.float64)
    if d.enabled:
        total = D.all_reduce_mean(total.to(d.device), d).cpu()  # the ratio of means is the ratio of sums
    return float(total[0] / total[1]) if total[1] > 0 else None


def save_in_epoch(run: Run, prog: Progress, epoch: int, iter_in_epoch: int) -> None:
    """`iter_NNNNNNNN.pth` (the newest only): the in-epoch checkpoint."""
    save_checkpoint(run, prog, run.work_dir / f"iter_{prog.global_iter:08d}.pth", epoch, iter_in_epoch)
    if run.d.main:
        prune(run.work_dir, "iter_*.pth", 1)


def train_step(run: Run, batches, correct: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """One optimiser step over `train.accum_steps` micro-batches: (mean loss on the device, clips).
    `correct` (a device scalar) gains the micro-batches' top-1 hits, without a host sync."""
    t, d = run.cfg.train, run.d
    loss_step = torch.zeros((), device=d.device)
    clips = 0
    for micro in range(t.accum_steps):
        try:
            batch = next(batches)
        except NoReadableVideo:  # from a loader worker, its traceback in the message: make it one line
            raise TpnError(_no_readable_video(run)) from None
        x, y = batch.clip.to(d.device, non_blocking=True), batch.label.to(d.device, non_blocking=True)
        if batch.aug is not None:  # data.augment_on_device: the loader drew flip/jitter, the device applies them
            x = apply_augment(x, batch.aug)
        sync = micro == t.accum_steps - 1 or not d.enabled  # DDP all-reduces on the last micro-batch only
        with nullcontext() if sync else run.net.no_sync():
            out = run.forward(x, y)
            run.scaler.scale(out["loss"] / t.accum_steps).backward()
        loss_step += out["loss"].detach() / t.accum_steps
        if correct is not None:
            correct += (out["logits"].detach().argmax(1) == y).sum()
        clips += x.shape[0]
    if t.clip_grad > 0:
        run.scaler.unscale_(run.opt)
        torch.nn.utils.clip_grad_norm_(run.params, t.clip_grad, foreach=True)
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    return loss_step, clips


def _no_readable_video(run: Run) -> str:
    report = run.work_dir / "bad_videos.jsonl"
    bad = {r["path"] for r in read_report(report) if r.get("split") == "train"}
    return (f"{run.cfg.data.train_list}: a training sample found no readable video in {REPLACEMENTS} tries; "
            f"{len(bad)} of its {len(run.data.train_set)} videos failed so far, listed in {report} "
            f"(`tpn data check` finds them all)")


def validate_and_keep_best(run: Run, prog: Progress, epoch: int) -> float | None:
    """`validate` after epoch `epoch` (0-based); a new best top-1 is saved as best.pth."""
    top1 = validate(run, epoch, prog.global_iter)
    if top1 is not None and top1 > prog.best:
        prog.best = top1
        save_checkpoint(run, prog, run.work_dir / "best.pth", epoch + 1, 0)
    return top1


def validate(run: Run, epoch: int, global_iter: int) -> float | None:
    """1 clip, centre crop on the validation list; logs and records the metrics, returns top-1.
    SIGTERM during it ends it (a long validation would outlast the grace time before SIGKILL):
    None, nothing recorded; every rank gets the same answer."""
    cfg, d = run.cfg, run.d
    run.model.eval()
    loader = make_eval_loader(run.data.val_set, d, cfg.train.batch_size, cfg.data.num_workers)
    local_stop = (lambda: run.stop.received) if run.stop is not None else None
    results = predict_probs(run.eval_forward, loader, d, stop=local_stop)
    if run.stop is not None and run.stop.requested():
        return None
    m = metrics(results, cfg.model.head.num_classes)
    run.mlog.write({"kind": "val", "epoch": epoch + 1, "iter": global_iter, "top1": m["top1"], "top5": m["top5"],
                    "mean_class_accuracy": m["mean_class_accuracy"], "videos": m["videos"],
                    "unreadable": m["skipped"]})
    if d.main:
        log.info("epoch %d validation (1 clip, centre crop): top-1 %.2f%% top-5 %.2f%% mean class %.2f%% "
                 "on %d videos%s", epoch + 1, 100 * m["top1"], 100 * m["top5"], 100 * m["mean_class_accuracy"],
                 m["videos"], f" ({m['skipped']} unreadable, left out: see bad_videos.jsonl)" if m["skipped"] else "")
    return m["top1"]


def save_checkpoint(run: Run, prog: Progress, path: Path, epoch: int, iter_in_epoch: int,
                    val_pending: bool = False) -> None:
    """Rank 0 writes; every rank contributes its RNG state. `val_pending`: epoch `epoch`'s
    validation was cut short (SIGTERM); a resume runs it before training on. Weights or optimiser state that are
    not finite (the loss diverged after the last log line) are never saved, and a failed write (a
    full disk) stops the run: one line on every rank, naming the last good checkpoint."""
    t, d = run.cfg.train, run.d
    state = {"state_dict": run.model.state_dict(), "optimizer": run.opt.state_dict()}
    counts = (int(run.epoch_hits), run.epoch_seen) if iter_in_epoch and run.epoch_hits is not None else (0, 0)
    gathered = D.gather_objects((rng_state(), trainable(state), counts), d)
    if not all(ok for _, ok, _ in gathered):
        where = f"epoch {epoch} iteration {run.data.iters_per_epoch}" if iter_in_epoch == 0 else \
            f"epoch {epoch + 1} iteration {iter_in_epoch}"
        raise TpnError(f"the weights are not finite at {where} (the loss diverged after the last log line): "
                       f"{path.name} not saved; lower train.lr or check the data; {_last_good(run)}")
    error = None
    if d.main:
        # the learning rate is a pure function of global_iter and the data order of (seed, epoch,
        # iter_in_epoch): these numbers are the scheduler's and the sampler's whole state
        try:
            save_atomic({"format": FORMAT, **state, "scaler": run.scaler.state_dict(),
                         "scheduler": {"schedule": t.schedule, "base_lr": run.lr0, "global_iter": prog.global_iter},
                         "sampler": {"seed": t.seed, "epoch": epoch, "consumed_per_rank":
                                     iter_in_epoch * run.data.videos_per_batch * t.accum_steps},
                         "epoch": epoch, "iter_in_epoch": iter_in_epoch, "global_iter": prog.global_iter,
                         "iters_per_epoch": run.data.iters_per_epoch, "best_top1": prog.best, "val_pending": val_pending,
                         "epoch_top1_counts": [sum(c[i] for *_, c in gathered) for i in (0, 1)],
                         "rng": [rng for rng, *_ in gathered], "config": to_dict(run.cfg),
                         "label_names": run.data.train_set.label_names, "world_size": d.world}, path)
        except TpnError as e:
            error = f"{e}; {_last_good(run)}"
    error = D.gather_objects(error, d)[0]  # every rank stops with rank 0: none waits at a collective
    if error:
        raise TpnError(error)
    if path.name != "best.pth":
        run.last_ckpt = path


def _last_good(run: Run) -> str:
    if run.last_ckpt is None:
        return "no checkpoint was saved before"
    return f"the last good checkpoint is {run.last_ckpt}"


def finish(run: Run, prog: Progress, summary: dict, t_start: float) -> dict:
    """Close the logs, plot the curves, log the summary line (rank 0); returns the summary."""
    d, work_dir = run.d, run.work_dir
    summary["stop_signal"] = run.stop.name if run.stopped and run.stop else None  # the CLI's exit status
    run.mlog.close()
    if run.data.stage is not None:
        run.data.stage.close()
    D.barrier(d)
    if d.main:
        curves = plot_curves(work_dir / "metrics.jsonl", work_dir / "training_curves.png")
        summary.update(best_val_top1=prog.best if prog.best >= 0 else None, curves=str(curves) if curves else None,
                       total_time_s=time.time() - t_start)
        if summary["epochs"] and not run.stopped:
            log.info("finished: %s; curves %s", _final_text(summary["epochs"], prog.best), curves)
    summary["model"] = run.model
    return summary


def _final_text(epochs: list[dict], best: float) -> str:
    """Epochs, time per epoch, the steady rate over all epochs with the warm-up apart, and the best
    validation top-1 (or that there was none)."""
    n = len(epochs)
    text = f"{n} epochs, {sum(r['time_s'] for r in epochs) / n:.1f} s per epoch, "
    steady = [r for r in epochs if "steady_clips_per_s" in r]
    if steady:
        secs = [r["time_s"] - r["warmup_s"] for r in steady]
        rate = sum(r["steady_clips_per_s"] * t for r, t in zip(steady, secs)) / max(1e-9, sum(secs))
        later = [r["warmup_s"] for r in steady[1:]]
        text += (f"{rate:.1f} clips/s steady (warm-up {steady[0]['warmup_s']:.1f} s in the first epoch"
                 + (f", {sum(later) / len(later):.1f} s in later ones)" if later else ")"))
    else:
        text += f"{sum(r['clips_per_s'] for r in epochs) / n:.1f} clips/s"
    return text + (f", best val top-1 {100 * best:.2f}%" if best >= 0 else ", no validation")


# ------------------------------------------------------------------ progress output
class _Window:
    """Mean loss, clips/s and the share of time spent waiting for batches since the previous log line."""

    def __init__(self, device: torch.device):
        self.t, self.clips, self.wait = time.time(), 0, 0.0
        self.loss, self.steps = torch.zeros((), device=device), 0


class _Waited:
    """The epoch's batches, adding up the time the loop waits in `next` for one. The loop queues the
    device's work and runs ahead of it, so that wait is about the time the step idles for data (when
    the device is the bound, the loader's queue is full and `next` returns at once)."""

    def __init__(self, batches):
        self.batches, self.wait_s = batches, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.wait_s += time.perf_counter() - t0


def _progress_bar(run: Run, epoch: int, first: int):
    """A tqdm bar on a terminal (rank 0); None in a log file."""
    if not (sys.stderr.isatty() and run.d.main):
        return None
    from tqdm import tqdm

    return tqdm(total=run.data.iters_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}",
                unit="it", dynamic_ncols=True)


def _log_step(run: Run, window: _Window, bar, epoch: int, it: int, global_iter: int, lr: float, clips: int,
              wait_s: float) -> None:
    d, ipe = run.d, run.data.iters_per_epoch
    loss = float(D.all_reduce_mean(window.loss, d)) / window.steps  # the only host sync
    window.loss.zero_()
    window.steps = 0
    if not math.isfinite(loss):
        raise TpnError(f"loss is {loss} at epoch {epoch + 1} iteration {it + 1}: lower train.lr "
                       f"or check the data (work dir {run.work_dir}); {_last_good(run)}")
    now = time.time()
    rec = {"kind": "train", "epoch": epoch + 1, "iter": global_iter, "epoch_float": epoch + (it + 1) / ipe,
           "loss": loss, "lr": lr, "clips_per_s": (clips - window.clips) * d.world / max(1e-9, now - window.t),
           "data_wait": round(min(1.0, (wait_s - window.wait) / max(1e-9, now - window.t)), 3)}  # this process's
    window.t, window.clips, window.wait = now, clips, wait_s
    run.mlog.write(rec)
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
    elif d.main:
        log.info("epoch %d iter %d/%d loss %.4f lr %.3e %.1f clips/s, waiting for data %.0f%%", epoch + 1, it + 1,
                 ipe, loss, lr, rec["clips_per_s"], 100 * rec["data_wait"])
