"""Which decoder a training run uses (`data.decoder`), and the policy that measures and chooses.

- `pyav` (or raw frames): the loader's workers decode everything; no stage.
- `nvdec`: every training item the GPU takes goes to the decode process (`tpn.data.nvdec`).
- `hybrid`: a share of the items goes to the GPU, the rest is decoded by the workers: the share
  that makes both sides finish together, predicted from rates measured on this run's own videos
  at the first epoch, then (`Policy`) refined in training: at each epoch's start the step's rate
  is timed at the share and at its neighbours, and the fastest is kept (rates drift as the page
  cache warms, other jobs start, the step changes). Every choice is logged with its numbers.
- `auto`: without a usable NVDEC, `pyav` (and why); else the predicted best path, confirmed by
  timing training at share 0 and at that path's share.

The dataset gets a `tpn.data.decoders.Routed` decoder whose share (shared memory) only this
module sets; the data layer never chooses.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np
import torch

from tpn.config import DataConfig
from tpn.data import nvdec
from tpn.data.decoders import Decoder, Routed, cpu_decoder, share_value
from tpn.errors import TpnError

log = logging.getLogger("tpn.train")


class Setup:
    """What `plan_decoding` decided before the dataset exists: the dataset's decoder and, for
    GPU decoding, the share it reads and the decoder stream to run in the decode process."""

    def __init__(self, decoder: Decoder, share: torch.Tensor | None = None, stream: str | None = None):
        self.decoder, self.share, self.stream = decoder, share, stream


def plan_decoding(cfg: DataConfig, device: torch.device, log_choice=log.info) -> Setup:
    """The dataset's decoder for `data.decoder`; `nvdec`/`hybrid` without a usable NVDEC is a
    one-line error, `auto` then logs why and decodes on the CPU. `TPN_DECODER_STANDIN=pyav` puts
    FFmpeg in NVDEC's place (the tests run the whole path on CPUs with it)."""
    cpu = cpu_decoder(cfg)
    if cfg.decoder == "pyav" or cfg.format == "mmaction_rawframes":
        return Setup(cpu)
    stream = "pyav" if os.environ.get("TPN_DECODER_STANDIN") == "pyav" else "nvdec"
    why = nvdec.nvdec_available(device) if stream == "nvdec" else None
    if why is not None:
        if cfg.decoder != "auto":
            raise TpnError(f"data.decoder {cfg.decoder}: {why}")
        log_choice("decoder auto: pyav (NVDEC not usable: %s)", why)
        return Setup(cpu)
    # until the stage has measured (at the first epoch, once the loader's workers run) the workers
    # decode everything, except with a share that is given
    given = 1.0 if cfg.decoder == "nvdec" else cfg.nvdec_share if cfg.decoder == "hybrid" else None
    share = share_value(given or 0.0)
    return Setup(Routed(nvdec.PacketReader(cfg.max_frame_pixels, cfg.short_side), cpu, share), share, stream)


def build_stage(setup: Setup, dataset, cfg: DataConfig, device: torch.device, workers: int, batch: int,
                in_flight: int, log_choice=log.info) -> nvdec.DecodeStage | None:
    """The GPU decoding stage of a training run (None: the workers decode everything). The decode
    process starts here, before the loader's workers fork."""
    if setup.share is None:
        return None
    process = nvdec.DecodeProcess(device, setup.stream, cfg.nvdec_threads)
    policy = Policy(setup.share, dataset, process, cfg.decoder, workers, batch, lag=in_flight,
                    given=cfg.decoder == "nvdec" or (cfg.decoder == "hybrid" and cfg.nvdec_share is not None),
                    log_choice=log_choice)
    if policy.given:
        log_choice("decoder %s: %.0f%% of training items decoded on %s by the decode process (%d decoder threads)",
                   cfg.decoder, 100 * float(setup.share[0]), device, process.threads)
    return nvdec.DecodeStage(process, device, dataset.report, on_lost=lambda: setup.share.fill_(0.0),
                             policy=policy)


# ------------------------------------------------------------------ measuring
def _rate(fn: Callable, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / max(time.perf_counter() - t0, 1e-9)


def calibrate(dataset, process: nvdec.DecodeProcess, workers: int, clips: int = 32, seed: int = 12345) -> dict:
    """Measured here, on this run's own videos: the decode process's clips/s (a batch of `clips`
    jobs, after one to warm the decoders up), one CPU process's clips/s decoding with PyAV and
    making jobs; the share of items to put on the GPU so both sides finish together, and the
    predicted clips/s of each path (`workers` loader processes)."""
    n = len(dataset)
    picks = np.random.default_rng(seed).choice(n, size=min(clips, n), replace=n < clips)
    rng = lambda i: np.random.default_rng([seed, int(i)])  # noqa: E731
    reader, cpu = dataset.decoder.first, dataset.decoder.rest
    t0 = time.perf_counter()
    made = [dataset.read(int(i), decoder=reader, rng=rng(i)) for i in picks]
    jobs = [(s, m[1]) for s, m in enumerate(made) if m is not None]
    job_s = (time.perf_counter() - t0) / len(picks)
    if not jobs:
        return dict(gpu_clips_per_s=0.0, share=0.0, reason="no video of this list goes to NVDEC")
    process.decode(jobs)  # decoders created, kernels compiled
    gpu = _rate(lambda: process.decode(jobs), len(jobs))
    few = picks[:max(2, len(picks) // 4)]  # 8 of the default 32: a steadier CPU rate
    cpu_s = 1 / _rate(lambda: [dataset.read(int(i), decoder=cpu, rng=rng(i)) for i in few], len(few))
    # per clip: CPU seconds to decode (c) or to make a job (d); W workers, NVDEC at `gpu`
    c, d, w = cpu_s, job_s, max(1, workers)
    share = min(1.0, gpu * c / (w + gpu * (c - d)))
    return dict(gpu_clips_per_s=round(gpu, 1), cpu_clips_per_s_per_process=round(1 / c, 1),
                job_ms=round(d * 1000, 2), workers=w, share=round(share, 3),
                predicted=dict(pyav=round(w / c, 1), nvdec=round(min(gpu, w / d), 1),
                               hybrid=round(gpu / share if share > 0 else w / c, 1)))


class Trial:
    """The batches the step takes, timed at each candidate share in turn (`lag` batches skipped
    after each switch: those already made at the old share, in the loader's queues), `window`
    batches each; then the fastest is kept and logged. `tick()` each time the loop takes a batch."""

    def __init__(self, share: torch.Tensor, candidates: list[tuple[str, float]], lag: int, window: int,
                 batch: int, log_choice=log.info, clock=time.perf_counter, what: str = "decoder"):
        self.share, self.candidates, self.lag, self.window, self.batch = share, candidates, lag, window, batch
        self.log_choice, self.clock, self.what = log_choice, clock, what
        self.rates: dict[str, float] = {}
        self.phase, self.seen, self.t0 = 0, 0, None
        share.fill_(candidates[0][1])

    @property
    def done(self) -> bool:
        return self.phase >= len(self.candidates)

    def tick(self) -> None:
        if self.done:
            return
        self.seen += 1
        if self.seen == self.lag:
            self.t0 = self.clock()
        elif self.seen == self.lag + self.window:
            name, _ = self.candidates[self.phase]
            self.rates[name] = round(self.window * self.batch / max(self.clock() - self.t0, 1e-9), 1)
            self.phase, self.seen = self.phase + 1, 0
            if not self.done:
                self.share.fill_(self.candidates[self.phase][1])
            else:
                best = max(self.candidates, key=lambda c: self.rates[c[0]])
                self.share.fill_(best[1])
                self.log_choice("%s: %s (measured in training: %s clips/s; GPU share %.2f)", self.what, best[0],
                                ", ".join(f"{n} {self.rates[n]}" for n, _ in self.candidates), best[1])


class Policy:
    """Sets the GPU share: given (`nvdec`, `hybrid` with `data.nvdec_share`), or measured at the
    first epoch (`calibrate`, before the loader's workers start) and timed in training (`Trial`);
    a hybrid share is timed against its neighbours (+-`step`) from the first epoch on and again at
    each later one, so it corrects a calibration that missed and follows drifting rates."""

    def __init__(self, share: torch.Tensor, dataset, process, decoder: str, workers: int, batch: int, lag: int,
                 given: bool, window: int = 50, step: float = 0.1, log_choice=log.info):
        self.share, self.dataset, self.process, self.decoder = share, dataset, process, decoder
        self.workers, self.batch, self.lag, self.window, self.step = workers, batch, lag, window, step
        self.given, self.log_choice = given, log_choice
        self.measured, self.trial, self.epochs = None, None, 0

    def start_epoch(self, stage) -> None:
        self.epochs += 1
        if self.given or stage.process is None:
            return
        if self.measured is None:
            self.measured = m = calibrate(self.dataset, self.process, self.workers)
            predicted = m.get("predicted", {"pyav": 1})
            best = "hybrid" if self.decoder == "hybrid" else max(predicted.items(), key=lambda kv: kv[1])[0]
            path_share = 1.0 if best == "nvdec" else m["share"]
            if m["share"] <= 0:
                self.share.fill_(0.0)
                self.log_choice("decoder %s: pyav (measured here: %s)", self.decoder, m)
                return
            if self.decoder == "hybrid":  # the balanced share, then timed in training against its neighbours
                self.share.fill_(m["share"])
                self.log_choice("decoder hybrid: %.0f%% of training items on the decode process (measured here: "
                                "%s)", 100 * m["share"], m)
            else:
                other = best if best != "pyav" else "hybrid"
                self.log_choice("decoder %s: timing training at GPU share 0 (pyav) and %.2f (%s); measured alone: %s",
                                self.decoder, path_share, other, m)
                self.trial = Trial(self.share, [("pyav", 0.0), (other, path_share)], self.lag, self.window,
                                   self.batch, self.log_choice, what=f"decoder {self.decoder}")
                return
        s = float(self.share[0])
        if 0 < s < 1 or (s == 1 and self.decoder == "hybrid"):  # a hybrid share: re-timed against its neighbours
            near = sorted({round(min(1.0, max(0.05, s + d)), 3) for d in (-self.step, 0.0, self.step)})
            self.trial = Trial(self.share, [(f"share {v:.2f}", v) for v in near], self.lag, self.window, self.batch,
                               self.log_choice, what=f"decoder {self.decoder} (epoch {self.epochs}, re-timed)")

    def tick(self) -> None:
        if self.trial is not None:
            self.trial.tick()
