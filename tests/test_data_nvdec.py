"""GPU decoding (tpn.data.nvdec), its CPU half and its logic, with FFmpeg's decoder standing in for NVDEC
(`PyAVStream`: the same Annex B packets, the same streaming calls). The NVDEC run itself is in
tests/test_gpu.py (the probe that first compared NVDEC with PyAV: benchmarks/results/nvdec_probe_h100_2026-11-26.json)."""
import json
import logging
from dataclasses import replace
from functools import partial

import av
import numpy as np
import pytest
import torch

from tests.test_engine_common import tempo_data, tiny_cfg  # noqa: F401
from tpn.data import nvdec, sampling
from tpn.data.datasets import build_dataset
from tpn.data.synthetic import render, write_mp4, write_webm
from tpn.errors import TpnError

CPU = torch.device("cpu")
SIZE = (160, 144)  # NVDEC's HEVC minimum is 144 x 144
NO_AUG = torch.tensor([[0.0, -1, -1, -1, 1, 1, 1]])  # no flip, no jitter (transforms.draw_augment)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """x264 medium (B-pyramid, one keyframe), x265 medium (open GOP), x264 keyframe every 8 and every 40."""
    root = tmp_path_factory.mktemp("nvdec")
    out = []
    for i, (codec, preset, gop) in enumerate([("h264", "medium", None), ("hevc", "medium", None),
                                              ("h264", "ultrafast", 8), ("h264", "medium", 40)]):
        path = root / f"v{i}_{codec}.mp4"
        write_mp4(path, render("right_slow", SIZE, 120, np.random.default_rng(i)), preset=preset, codec=codec,
                  gop=gop)
        out.append(path)
    return out


def _reference_nv12(path) -> list[torch.Tensor]:
    """Every frame of a sequential PyAV decode, in presentation order, as NV12."""
    with av.open(str(path)) as c:
        return [nvdec.PyAVStream._nv12(f) for f in c.decode(video=0)]


def _jobs(videos, count=12, seed=0):
    rng = np.random.default_rng(seed)
    jobs = []
    for s in range(count):
        path = videos[s % len(videos)]
        v = nvdec.demux(path)
        n = len(v.index)
        wanted = (sampling.train_indices(n, 8, 4, rng) if s % 2 else np.sort(rng.choice(n, 8, replace=False)))
        jobs.append((s, nvdec.make_job(path, v, wanted, [(v.height, v.width)], [(0, 0, v.height, v.width)], 64,
                                       NO_AUG)))
    return jobs


def test_streamed_jobs_give_exactly_the_frames_of_a_sequential_decode(videos):
    """Jobs from four videos streamed into one decoder per thread, never drained between them (each
    closed by an end-of-sequence NAL unit; non-reference packets of unwanted frames left out): the
    planes of every wanted frame equal a sequential decode's, so the RGB does too."""
    jobs = _jobs(videos)
    refs = {p: _reference_nv12(p) for p in videos}
    pool = nvdec.DecoderPool(CPU, threads=2, factory=nvdec.PyAVStream)
    got = pool.decode(jobs)
    dropped = 0
    for slot, job in jobs:
        v = nvdec.demux(job.path)
        expected = nvdec.nv12_to_rgb(torch.stack([refs[next(p for p in videos if str(p) == job.path)][i]
                                                  for i in job.wanted]), SIZE[1], SIZE[0])
        assert torch.equal(got[slot], expected), job.path
        first = nvdec.plan(v, job.wanted)[0]
        dropped += (int(job.frames.size) < int(max(np.flatnonzero(np.isin(v.index, job.wanted)))) - first + 1)
    assert dropped > 0  # the B-frame files had packets left out
    pool.close()


def test_rgb_is_pyav_rgb24_byte_for_byte(videos):
    from tpn.data.video import read_video_frames

    jobs = _jobs(videos, 4)
    got = nvdec.DecoderPool(CPU, 1, nvdec.PyAVStream).decode(jobs)
    for slot, job in jobs:
        ref = torch.from_numpy(read_video_frames(job.path, job.wanted)).permute(0, 3, 1, 2)
        assert torch.equal(got[slot], ref), job.path


def test_demux_leaves_what_nvdec_does_not_take_to_the_cpu(tmp_path, videos):
    frames = render("right_slow", (64, 48), 20, np.random.default_rng(0))
    write_mp4(tmp_path / "rot.mp4", frames, rotation=90)
    assert nvdec.demux(tmp_path / "rot.mp4") is None
    write_webm(tmp_path / "vp9.webm", frames)
    assert nvdec.demux(tmp_path / "vp9.webm") is None
    v = nvdec.demux(videos[0])
    assert v.codec == "h264" and (v.width, v.height) == SIZE and not v.bt709 and not v.full_range
    write_mp4(tmp_path / "small.mp4", frames, codec="hevc")  # under NVDEC's HEVC minimum
    assert nvdec.demux(tmp_path / "small.mp4") is None
    assert v.data[0][:4] == b"\x00\x00\x00\x01"  # Annex B start code, not an mp4 length


@pytest.mark.parametrize("crop,k", [("random_resized", 1), ("random", 2)])
def test_gpu_item_draws_what_the_cpu_item_draws(tempo_data, crop, k):  # noqa: F811
    """The GPU path's item makes the same frames, crops, flips, jitter and labels as the CPU path
    (k clips of one video with data.clips_per_decode)."""
    cfg = tiny_cfg(tempo_data, ["data.flip=0.5", "data.color_jitter=true", f"data.train_crop={crop}",
                                "data.augment_on_device=true", f"data.clips_per_decode={k}", "train.batch_size=4"])
    ds = build_dataset(cfg.data, "train")
    pool = nvdec.DecoderPool(CPU, 1, nvdec.PyAVStream)
    for index in range(6):
        cpu = ds._cpu_train_item(index, ds._rng(index))
        gpu = ds._gpu_job(index, ds._rng(index))
        assert torch.equal(gpu.aug, cpu.aug) and torch.equal(torch.as_tensor(gpu.label), torch.as_tensor(cpu.label))
        assert gpu.clip.shape == cpu.clip.shape
        rgb = pool.decode([(0, gpu.job)])[0]
        clips = nvdec.clips_from_frames(rgb, gpu.job)
        assert torch.equal(clips, cpu.clip.reshape(clips.shape)), index  # the same bytes: conversion and resize


def test_training_through_the_stage_with_a_broken_video(tempo_data, tmp_path, caplog):  # noqa: F811
    """hybrid: half the items decoded by the stage (CPU stand-in), a missing file among them is
    reported once and training goes on; the epoch record says how many clips each side made."""
    from tpn.engine import train as train_mod

    root = tmp_path / "data"
    root.mkdir()
    lines = (tempo_data / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join(lines + ["missing.mp4 0"]) + "\n")
    cfg = tiny_cfg(tempo_data, [f"data.train_list={root / 'train.txt'}", "data.decoder=hybrid",
                                "data.nvdec_share=0.5", "data.num_workers=1", "train.epochs=1",
                                "train.val_interval=0", "train.batch_size=4"])
    orig = nvdec.build_stage
    try:
        nvdec.build_stage = partial(orig, factory=nvdec.PyAVStream)
        with caplog.at_level(logging.INFO):
            train_mod.train(cfg, tmp_path / "run", device="cpu")
    finally:
        nvdec.build_stage = orig
    epoch = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"epoch"' in x and '"kind": "epoch"' in x][-1]
    assert epoch["decode"]["gpu_clips"] > 0 and epoch["decode"]["cpu_clips"] > 0
    assert "decoder hybrid: 50% of training items" in caplog.text


def test_stage_reads_a_failed_job_on_the_cpu_and_replaces_an_unreadable_one(videos, tmp_path):
    jobs = _jobs(videos, 3)
    job0 = jobs[0][1]
    broken = job0._replace(data=np.zeros_like(job0.data))  # garbage packets: nothing comes out
    missing = jobs[1][1]._replace(path=str(tmp_path / "gone.mp4"), data=np.zeros_like(jobs[1][1].data))
    reported = []
    ds = type("D", (), {"_report": lambda self, i, e: reported.append((i, str(e)))})()
    stage = nvdec.DecodeStage(ds, nvdec.DecoderPool(CPU, 1, nvdec.PyAVStream), CPU)
    from tpn.data.datasets import Batch

    n = 3
    batch = Batch(torch.zeros(n, 3, 8, 64, 64, dtype=torch.uint8), torch.arange(n), torch.arange(n),
                  torch.ones(n, dtype=torch.bool), None, [broken, missing, jobs[2][1]])
    out = list(stage.epoch(iter([batch])))[0]
    assert stage.fallbacks == 2 and len(reported) == 1 and "gone.mp4" in reported[0][1]
    assert out.clip[0].float().mean() > 0 and torch.equal(out.clip[1], out.clip[0])  # row 1 took row 0's clip
    assert out.label.tolist() == [0, 0, 2]


def test_choosing_the_decoder(tempo_data, caplog):  # noqa: F811
    cfg = tiny_cfg(tempo_data)
    ds = build_dataset(cfg.data, "train")
    with caplog.at_level(logging.INFO):
        assert nvdec.build_stage(ds, "auto", CPU, 2) is None
    assert "decoder auto: pyav (NVDEC not usable: device cpu is not a CUDA GPU)" in caplog.text
    with pytest.raises(TpnError, match="^data.decoder nvdec: device cpu is not a CUDA GPU$"):
        nvdec.build_stage(ds, "nvdec", CPU, 2)
    m = nvdec.calibrate(ds, nvdec.DecoderPool(CPU, 1, nvdec.PyAVStream), workers=2, clips=8)
    assert 0 < m["share"] <= 1 and m["gpu_clips_per_s"] > 0 and m["predicted"]["hybrid"] >= m["predicted"]["pyav"]
    stage = nvdec.build_stage(ds, "auto", CPU, 2, factory=nvdec.PyAVStream)
    assert float(ds._gpu_share[0]) == 0  # measured once the loader's workers run: at the first epoch
    assert list(stage.epoch(iter([]))) == [] and 0 < float(ds._gpu_share[0]) <= 1 and stage.measured["share"] > 0
    timed = nvdec.build_stage(ds, "auto", CPU, 2, factory=nvdec.PyAVStream, trial=(2, 2, 4))
    assert list(timed.epoch(iter([]))) == [] and isinstance(timed.trial, nvdec.Trial)
    assert float(ds._gpu_share[0]) == 0 and [n for n, _ in timed.trial.candidates] == ["pyav", "hybrid"]
    ds2 = build_dataset(replace(cfg.data, decoder="pyav"), "train")
    assert nvdec.build_stage(ds2, "pyav", CPU, 2) is None and float(ds2._gpu_share[0]) == 0


def test_stage_fills_every_row_of_a_batch_of_multi_clip_items(tempo_data):  # noqa: F811
    """Through the loader (collate_clips: k clips an item, one job an item) and the stage, each row
    holds the clip the CPU path makes for it."""
    from tpn.data.loader import build_loader

    cfg = tiny_cfg(tempo_data, ["data.clips_per_decode=2", "train.batch_size=4", "data.augment_on_device=true"])
    ds = build_dataset(cfg.data, "train")
    ds.set_gpu_share(1.0)
    stage = nvdec.DecodeStage(ds, nvdec.DecoderPool(CPU, 2, nvdec.PyAVStream), CPU)
    batch = next(stage.epoch(iter(build_loader(ds, 4, 0, persistent_workers=False))))
    assert batch.job is None and batch.clip.shape[0] == 4 and stage.gpu_clips == 4
    cpu = [ds._cpu_train_item(i, ds._rng(i)) for i in range(2)]
    expected = torch.cat([c.clip for c in cpu])
    assert torch.equal(batch.clip, expected)
    assert torch.equal(batch.label, torch.cat([c.label for c in cpu])) and torch.equal(batch.aug, torch.cat([c.aug for c in cpu]))


def _write_bt709(path, frames) -> None:
    """An x264 file whose frames say BT.709 (as most HD downloads), which PyAV's rgb24 then uses."""
    from av.video.reformatter import Colorspace

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.colorspace = Colorspace.ITU709
        for f in frames:
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p", dst_colorspace=Colorspace.ITU709)
            vf.colorspace = Colorspace.ITU709
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_bt709_videos_convert_with_the_matrix_pyav_uses(tmp_path):
    from tpn.data.video import read_video_frames

    path = tmp_path / "hd.mp4"
    _write_bt709(path, render("up_fast", SIZE, 30, np.random.default_rng(1)))
    v = nvdec.demux(path)
    assert v.bt709 and not v.full_range
    wanted = np.arange(0, 30, 4)
    job = nvdec.make_job(path, v, wanted, [(v.height, v.width)], [(0, 0, v.height, v.width)], 64, NO_AUG)
    rgb = nvdec.DecoderPool(CPU, 1, nvdec.PyAVStream).decode([(0, job)])[0]
    ref = torch.from_numpy(read_video_frames(path, wanted)).permute(0, 3, 1, 2)
    assert torch.equal(rgb, ref)


def test_auto_keeps_the_share_that_trained_faster(tempo_data, caplog):  # noqa: F811
    """`Trial`: batches the step takes are timed at share 0 and at the measured share, the first `lag`
    after each switch skipped; the faster share is kept and logged."""
    ds = build_dataset(tiny_cfg(tempo_data).data, "train")
    now = [0.0]
    notes = []
    trial = nvdec.Trial(ds, [("pyav", 0.0), ("hybrid", 0.3)], lag=3, window=4, batch=8,
                        log_choice=lambda fmt, *a: notes.append(fmt % a), clock=lambda: now[0])
    assert float(ds._gpu_share[0]) == 0
    for step_s in [9, 9, 9, 1, 1, 1, 1] + [9, 9, 9, 0.5, 0.5, 0.5, 0.5]:  # lag steps are not timed
        if trial.seen == 0 and trial.phase == 1:
            assert float(ds._gpu_share[0]) == pytest.approx(0.3)
        now[0] += step_s
        trial.tick()
    assert trial.rates == {"pyav": 8.0, "hybrid": 16.0} and trial.done
    assert float(ds._gpu_share[0]) == pytest.approx(0.3)
    assert notes == ["decoder auto: hybrid (measured in training: pyav 8.0, hybrid 16.0 clips/s; GPU share 0.30)"]
    slow = nvdec.Trial(ds, [("pyav", 0.0), ("hybrid", 0.3)], lag=1, window=2, batch=8, log_choice=lambda *a: None,
                       clock=lambda: now[0])
    for step_s in [1, 1, 1, 1, 5, 5]:
        now[0] += step_s
        slow.tick()
    assert slow.done and float(ds._gpu_share[0]) == 0  # hybrid trained slower: back to pyav


def test_the_stage_ticks_its_trial_once_per_batch_taken(tempo_data):  # noqa: F811
    ds = build_dataset(tiny_cfg(tempo_data).data, "train")
    ticks = []
    stage = nvdec.DecodeStage(ds, nvdec.DecoderPool(CPU, 1, nvdec.PyAVStream), CPU,
                              choose=lambda d, p: ({}, type("T", (), {"tick": lambda self: ticks.append(1)})()))
    from tpn.data.datasets import Batch

    batches = [Batch(torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8), torch.zeros(2), torch.zeros(2),
                     torch.ones(2, dtype=torch.bool)) for _ in range(5)]
    assert len(list(stage.epoch(iter(batches)))) == 5 and len(ticks) == 5
