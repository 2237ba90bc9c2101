"""The training loop: one function a person reads top to bottom.

SGD (momentum, nesterov option, weight decay with optional BN/bias exemption), linear
learning-rate scaling with the total batch, linear warm-up then step or cosine decay
(a pure function of the iteration, so resuming needs no scheduler object), gradient
accumulation and clipping, bf16 autocast + channels_last_3d (+ torch.compile) on CUDA,
DDP under torchrun, validation every N epochs, atomic checkpoints with exact resume.
"""
from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tpn.accel import compile_arg, make_forward, to_channels_last
from tpn.checkpoint import FORMAT, CheckpointError, load_file, load_state_dict_strict, save_atomic
from tpn.config import Config, dump_config, to_dict
from tpn.data.datasets import build_dataset
from tpn.data.loader import build_loader
from tpn.data.transforms import apply_augment
from tpn.engine import distributed as D
from tpn.engine.evaluate import make_eval_loader, metrics, predict_probs
from tpn.errors import TpnError
from tpn.models.build import build_model

log = logging.getLogger("tpn.train")


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
    if cfg.train.decay_norm_and_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm = isinstance(m, nn.modules.batchnorm._NormBase)
            (no_decay if is_norm or name == "bias" else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------ checkpoints
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                       int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_files(work_dir: Path) -> list[Path]:
    return sorted(work_dir.glob("epoch_*.pth")) + sorted(work_dir.glob("iter_*.pth"))


def find_resume(work_dir: Path, resume: str | None) -> tuple[dict | None, Path | None]:
    """`auto`: the newest readable training checkpoint in work_dir (a truncated one is skipped)."""
    if not resume:
        return None, None
    if resume != "auto":
        obj, _ = load_file(resume)
        if not isinstance(obj, dict) or "optimizer" not in obj:
            raise CheckpointError(f"{resume}: not a tpn training checkpoint (no optimiser state)")
        return obj, Path(resume)
    best = (None, None, -1)
    for p in checkpoint_files(work_dir):
        try:
            obj, _ = load_file(p)
        except CheckpointError as e:
            log.warning("ignoring unreadable checkpoint %s (%s)", p, e)
            continue
        if isinstance(obj, dict) and obj.get("global_iter", -1) > best[2] and "optimizer" in obj:
            best = (obj, p, obj["global_iter"])
    return best[0], best[1]


def prune(work_dir: Path, pattern: str, keep: int) -> None:
    files = sorted(work_dir.glob(pattern), key=lambda p: p.stat().st_mtime)
    for p in files[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)


# ------------------------------------------------------------------ logging
class MetricsLog:
    def __init__(self, work_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = work_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(work_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                log.info("tensorboard not installed: scalars go to metrics.jsonl only")

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            step = rec.get("iter", 0)
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{rec.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    if not metrics_path.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    tr = [r for r in recs if r.get("kind") == "train"]
    va = [r for r in recs if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    if tr:
        axes[0].plot([r["epoch_float"] for r in tr], [r["loss"] for r in tr], lw=1)
        axes[2].plot([r["epoch_float"] for r in tr], [r["lr"] for r in tr], lw=1)
    if va:
        axes[1].plot([r["epoch"] for r in va], [100 * r["top1"] for r in va], "o-", label="val top-1")
        axes[1].plot([r["epoch"] for r in va], [100 * r["top5"] for r in va], "s--", label="val top-5")
        axes[1].legend()
    for ax, title in zip(axes, ["train loss", "validation accuracy (%)", "learning rate"]):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def setup_logging(work_dir: Path | None, main: bool) -> None:
    root = logging.getLogger("tpn")
    root.setLevel(logging.INFO if main else logging.WARNING)
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    if work_dir is not None and main:
        fh = logging.FileHandler(work_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)


# ------------------------------------------------------------------ the loop
def train(cfg: Config, work_dir: str | Path, resume: str | None = None, device: str = "auto",
          max_iters: int | None = None) -> dict:
    """Train `cfg`; returns a summary dict. `max_iters` stops early (for tests)."""
    d = D.setup(device)
    work_dir = Path(work_dir)
    if d.main:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "config.yaml").write_text(dump_config(cfg))
    D.barrier(d)
    setup_logging(work_dir, d.main)
    t = cfg.train
    torch.manual_seed(t.seed + d.rank)
    np.random.seed(t.seed + d.rank)
    random.seed(t.seed + d.rank)
    cuda = d.device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = t.cudnn_benchmark

    ckpt, ckpt_path = find_resume(work_dir, resume)  # first: a wrong --resume fails before any work
    report = work_dir / "bad_videos.jsonl"
    train_set = build_dataset(cfg.data, "train", report_path=report, seed=t.seed)
    val_set = build_dataset(cfg.data, "val", report_path=report) if t.val_interval > 0 and cfg.data.val_list else None
    sampler = D.ShardedSampler(len(train_set), d.rank, d.world, shuffle=True, seed=t.seed)
    workers = cfg.data.num_workers
    # persistent workers (no re-spawn each epoch); their seeds come from the loader's own
    # generator, not the global RNG, and augmentation from (seed, epoch, index): exact resume
    loader = build_loader(train_set, t.batch_size, workers, sampler=sampler, pin_memory=cuda, drop_last=True,
                          persistent_workers=True, seed=t.seed, prefetch_factor=4)
    # the sampler counts videos; a batch of t.batch_size clips holds clips_per_decode per video
    videos_per_batch = t.batch_size // train_set.clips_per_item
    iters_per_epoch = len(sampler) // videos_per_batch // t.accum_steps
    if iters_per_epoch < 1:
        raise TpnError(f"{cfg.data.train_list}: {len(train_set)} videos are fewer than one batch "
                       f"({videos_per_batch} x {d.world} processes x {t.accum_steps} accumulation steps)")

    model = build_model(cfg).to(d.device)
    if t.sync_bn and d.enabled and cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif t.sync_bn and d.enabled:
        log.warning("train.sync_bn: torch's SyncBatchNorm runs on GPUs only; on CPU BN statistics stay per process")
    channels_last = t.channels_last and cuda
    if channels_last:
        model = to_channels_last(model)
    groups = param_groups(model, cfg)
    lr0 = base_lr(cfg, d.world)
    opt = torch.optim.SGD(groups, lr=lr0, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
                          weight_decay=t.weight_decay, fused=cuda)
    params = [p for g in groups for p in g["params"]]

    amp = t.amp and cuda
    fp16 = amp and t.amp_dtype == "float16"
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)  # bf16 and fp32 need no loss scaling

    start_epoch, start_iter, global_iter, best = 0, 0, 0, -1.0
    if ckpt is not None:
        load_state_dict_strict(model, ckpt["state_dict"], str(ckpt_path))
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_iter, global_iter = ckpt["epoch"], ckpt["iter_in_epoch"], ckpt["global_iter"]
        best = ckpt.get("best_top1", -1.0)
        set_rng_state(ckpt["rng"][d.rank] if d.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        saved_world = ckpt.get("world_size", d.world)
        if saved_world != d.world or ckpt.get("iters_per_epoch", iters_per_epoch) != iters_per_epoch:
            log.warning("resuming a run of %d processes with %d: training continues, but not bit-exactly "
                        "(the data order and the learning-rate scaling change)", saved_world, d.world)
        log.info("resumed from %s (epoch %d, iteration %d of %d)", ckpt_path, start_epoch + 1, start_iter,
                 iters_per_epoch)
    elif resume == "auto":
        log.info("no training checkpoint in %s: starting from scratch", work_dir)

    net = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if cuda else None) \
        if d.enabled else model
    forward = make_forward(net, cfg, amp=amp and not fp16, channels_last=channels_last,
                           compile_model=compile_arg(t) if cuda else False, with_labels=True)
    eval_forward = make_forward(model, cfg, amp=amp and not fp16, channels_last=channels_last,
                                compile_model=False, with_labels=False)
    if fp16:
        forward, eval_forward = _autocast_fp16(forward), _autocast_fp16(eval_forward)
    mlog = MetricsLog(work_dir, d.main)
    label_names = train_set.label_names

    def save(path: Path, epoch: int, iter_in_epoch: int) -> None:
        rngs = D.gather_objects(rng_state(), d)
        if not d.main:
            return
        # the learning rate is a pure function of global_iter and the data order of (seed, epoch,
        # iter_in_epoch): these numbers are the scheduler's and the sampler's whole state
        save_atomic({"format": FORMAT, "state_dict": model.state_dict(), "optimizer": opt.state_dict(),
                     "scaler": scaler.state_dict(),
                     "scheduler": {"schedule": t.schedule, "base_lr": lr0, "global_iter": global_iter},
                     "sampler": {"seed": t.seed, "epoch": epoch, "consumed_per_rank":
                                 iter_in_epoch * videos_per_batch * t.accum_steps},
                     "epoch": epoch, "iter_in_epoch": iter_in_epoch, "global_iter": global_iter,
                     "iters_per_epoch": iters_per_epoch, "best_top1": best, "rng": rngs,
                     "config": to_dict(cfg), "label_names": label_names, "world_size": d.world}, path)

    summary = {"work_dir": str(work_dir), "epochs": []}
    tty = sys.stderr.isatty() and d.main
    stop = False
    t_start = time.time()
    for epoch in range(start_epoch, t.epochs):
        train_set.set_epoch(epoch)
        first = start_iter if epoch == start_epoch else 0
        sampler.set_epoch(epoch, start=first * videos_per_batch * t.accum_steps)
        model.train()
        t_epoch, clips = time.time(), 0
        t_window, clips_window = t_epoch, 0  # throughput since the last log line (steady state)
        loss_window, window_steps = torch.zeros((), device=d.device), 0  # mean loss since the last log line
        bar = None
        if tty:
            from tqdm import tqdm

            bar = tqdm(total=iters_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{t.epochs}", unit="it",
                       dynamic_ncols=True)
        batches = iter(loader)
        for it in range(first, iters_per_epoch):
            lr = lr_at(cfg, global_iter, iters_per_epoch, lr0)
            for g in opt.param_groups:
                g["lr"] = lr
            loss_step = torch.zeros((), device=d.device)
            for micro in range(t.accum_steps):
                x, y, *aug = next(batches)
                x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
                if aug:  # data.augment_on_device: the loader drew flip/jitter, the device applies them
                    x = apply_augment(x, aug[0])
                sync = micro == t.accum_steps - 1 or not d.enabled
                ctx = net.no_sync() if not sync else _null()
                with ctx:
                    out = forward(x, y)
                    scaler.scale(out["loss"] / t.accum_steps).backward()
                loss_step += out["loss"].detach() / t.accum_steps
                clips += x.shape[0]
            loss_window += loss_step
            window_steps += 1
            if t.clip_grad > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, t.clip_grad, foreach=True)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            global_iter += 1
            last = it == iters_per_epoch - 1
            if global_iter % t.log_interval == 0 or last:
                loss = float(D.all_reduce_mean(loss_window, d)) / window_steps  # the only host sync
                loss_window.zero_()
                window_steps = 0
                if not math.isfinite(loss):
                    raise TpnError(f"loss is {loss} at epoch {epoch + 1} iteration {it + 1}: lower train.lr "
                                   f"or check the data (work dir {work_dir})")
                now = time.time()
                rec = {"kind": "train", "epoch": epoch + 1, "iter": global_iter,
                       "epoch_float": epoch + (it + 1) / iters_per_epoch, "loss": loss, "lr": lr,
                       "clips_per_s": (clips - clips_window) * d.world / max(1e-9, now - t_window)}
                t_window, clips_window = now, clips
                mlog.write(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                elif d.main:
                    log.info("epoch %d iter %d/%d loss %.4f lr %.3e %.1f clips/s", epoch + 1, it + 1,
                             iters_per_epoch, loss, lr, rec["clips_per_s"])
            if bar is not None:
                bar.update(1)
            if t.ckpt_interval_iters and global_iter % t.ckpt_interval_iters == 0 and not last:
                save(work_dir / f"iter_{global_iter:08d}.pth", epoch, it + 1)
                if d.main:
                    prune(work_dir, "iter_*.pth", 1)
            if max_iters is not None and global_iter >= max_iters:
                stop = True
                break
        if bar is not None:
            bar.close()
        if stop:
            break
        epoch_time = time.time() - t_epoch
        erec = {"kind": "epoch", "epoch": epoch + 1, "iter": global_iter, "time_s": epoch_time,
                "clips_per_s": clips * d.world / epoch_time}
        if val_set is not None and ((epoch + 1) % t.val_interval == 0 or epoch + 1 == t.epochs):
            model.eval()
            vloader = make_eval_loader(val_set, d, t.batch_size, workers)
            res = predict_probs(eval_forward, vloader, d)
            m = metrics(res, cfg.model.head.num_classes)
            vrec = {"kind": "val", "epoch": epoch + 1, "iter": global_iter, "top1": m["top1"], "top5": m["top5"],
                    "mean_class_accuracy": m["mean_class_accuracy"], "videos": m["videos"]}
            mlog.write(vrec)
            erec.update(val_top1=m["top1"])
            if d.main:
                log.info("epoch %d validation (1 clip, centre crop): top-1 %.2f%% top-5 %.2f%% mean class %.2f%% "
                         "on %d videos", epoch + 1, 100 * m["top1"], 100 * m["top5"],
                         100 * m["mean_class_accuracy"], m["videos"])
            if m["top1"] > best:
                best = m["top1"]
                save(work_dir / "best.pth", epoch + 1, 0)
        mlog.write(erec)
        summary["epochs"].append(erec)
        save(work_dir / f"epoch_{epoch + 1:04d}.pth", epoch + 1, 0)
        if d.main:
            prune(work_dir, "epoch_*.pth", t.keep_last)
            for p in work_dir.glob("iter_*.pth"):
                p.unlink(missing_ok=True)
            log.info("epoch %d done in %.1f s, %.1f clips/s", epoch + 1, epoch_time, erec["clips_per_s"])
    mlog.close()
    D.barrier(d)
    if d.main:
        curves = plot_curves(work_dir / "metrics.jsonl", work_dir / "training_curves.png")
        summary.update(best_val_top1=best, curves=str(curves) if curves else None,
                       total_time_s=time.time() - t_start)
        if summary["epochs"]:
            e = summary["epochs"]
            log.info("finished: %d epochs, %.1f s per epoch, %.1f clips/s, best val top-1 %.2f%%; curves %s",
                     len(e), sum(r["time_s"] for r in e) / len(e), sum(r["clips_per_s"] for r in e) / len(e),
                     100 * max(best, 0), curves)
    summary["model"] = model
    return summary


def _autocast_fp16(fn):
    def run(*args):
        with torch.autocast("cuda", dtype=torch.float16):
            return fn(*args)

    return run


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
