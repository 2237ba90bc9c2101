"""GPU decoding (tpn.data.nvdec), its CPU half and its logic, with FFmpeg's decoder standing in for NVDEC
(`PyAVStream`: the same Annex B packets, the same streaming calls). The NVDEC run itself is in
tests/test_gpu.py (the probe that first compared NVDEC with PyAV: benchmarks/results/nvdec_probe_h100_2026-11-26.json)."""
import json
import logging
from dataclasses import replace

import av
import numpy as np
import pytest
import torch

from tests.test_engine_common import tempo_data, tiny_cfg  # noqa: F401
from tpn.data import nvdec, sampling
from tpn.data.datasets import Batch, build_dataset
from tpn.data.decoders import PyAVDecoder, Routed, share_value
from tpn.data.plan import ClipPlan
from tpn.engine import decoding
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


def _job(path, v, wanted, out=64, aug=NO_AUG):
    """The job of a plan that takes whole frames of `v` (`wanted`), resized to out x out."""
    wanted = np.asarray(wanted, np.int64)
    plan = ClipPlan(0, str(path), wanted.reshape(1, -1), np.array([[v.height, v.width]]),
                    np.array([[0, 0, v.height, v.width]]), out, np.array([0]), aug.numpy())
    return nvdec.make_job(plan, v)


def _jobs(videos, count=12, seed=0):
    rng = np.random.default_rng(seed)
    jobs = []
    for s in range(count):
        path = videos[s % len(videos)]
        v = nvdec.demux(path)
        n = len(v.index)
        wanted = (sampling.train_indices(n, 8, 4, rng) if s % 2 else np.sort(rng.choice(n, 8, replace=False)))
        jobs.append((s, _job(path, v, wanted)))
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
        first = nvdec.packets_for(v, job.wanted)[0]
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


def _routed(ds, share=1.0) -> Routed:
    """A dataset's decoder that sends a share of its items to GPU decoding, as the engine builds it."""
    cpu = PyAVDecoder(ds.cfg.max_frame_pixels, ds.cfg.short_side)
    return Routed(nvdec.PacketReader(ds.cfg.max_frame_pixels, ds.cfg.short_side), cpu, share_value(share))


@pytest.mark.parametrize("crop,k", [("random_resized", 1), ("random", 2)])
def test_gpu_item_draws_what_the_cpu_item_draws(tempo_data, crop, k):  # noqa: F811
    """The packet reader plans an item as the CPU decoder does (the same frames, crops, flips, jitter
    and labels, k clips of one video with data.clips_per_decode), and the decode process makes the
    same bytes from its job."""
    cfg = tiny_cfg(tempo_data, ["data.flip=0.5", "data.color_jitter=true", f"data.train_crop={crop}",
                                "data.augment_on_device=true", f"data.clips_per_decode={k}", "train.batch_size=4"])
    ds = build_dataset(cfg.data, "train")
    reader = nvdec.PacketReader(cfg.data.max_frame_pixels, cfg.data.short_side)
    process = nvdec.DecodeProcess(CPU, "pyav", threads=1)
    try:
        for index in range(6):
            cpu = ds.train_item(*ds.read(index))
            plan, job = ds.read(index, decoder=reader)
            gpu = ds.train_item(plan, job)
            assert torch.equal(gpu.aug, cpu.aug) and torch.equal(torch.as_tensor(gpu.label), torch.as_tensor(cpu.label))
            assert gpu.clip.shape == cpu.clip.shape and gpu.job is job
            clips = process.decode([(0, job)])[0]
            assert torch.equal(clips, cpu.clip.reshape(clips.shape)), index  # the same bytes
    finally:
        process.close()


def _stage_cfg(tempo_data, extra=()):  # noqa: F811
    return tiny_cfg(tempo_data, ["data.num_workers=1", "train.epochs=1", "train.val_interval=0",
                                 "train.batch_size=4", *extra])


def _last_epoch(run) -> dict:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "epoch"' in x][-1]


def test_training_through_the_decode_process_with_a_broken_video(tempo_data, tmp_path, caplog, monkeypatch):  # noqa: F811
    """hybrid: half the items decoded by the decode process (FFmpeg standing in for NVDEC), a
    missing file among them is reported once and training goes on; the epoch record says how many
    clips each side made."""
    from tpn.engine import train as train_mod

    monkeypatch.setenv("TPN_DECODER_STANDIN", "pyav")
    root = tmp_path / "data"
    root.mkdir()
    lines = (tempo_data / "train.txt").read_text().splitlines()
    (root / "train.txt").write_text("\n".join(lines + ["missing.mp4 0"]) + "\n")
    cfg = _stage_cfg(tempo_data, [f"data.train_list={root / 'train.txt'}", "data.decoder=hybrid",
                                  "data.nvdec_share=0.5"])
    with caplog.at_level(logging.INFO):
        train_mod.train(cfg, tmp_path / "run", device="cpu")
    epoch = _last_epoch(tmp_path / "run")
    assert epoch["decode"]["gpu_clips"] > 0 and epoch["decode"]["cpu_clips"] > 0
    assert "decoder hybrid: 50% of training items decoded on cpu by the decode process" in caplog.text


def test_a_dead_decode_process_is_one_line_and_the_cpu_takes_over(tempo_data, tmp_path, caplog, monkeypatch):  # noqa: F811
    """The decode process is killed before the first batch: one warning, the share goes to 0, the
    batches already sent are read on the CPU, and training ends with every clip made."""
    from tpn.engine import train as train_mod

    monkeypatch.setenv("TPN_DECODER_STANDIN", "pyav")
    orig = decoding.build_stage

    def killed(*a, **k):
        stage = orig(*a, **k)
        stage.process.proc.kill()
        return stage

    monkeypatch.setattr(decoding, "build_stage", killed)
    cfg = _stage_cfg(tempo_data, ["data.decoder=nvdec"])
    with caplog.at_level(logging.INFO):
        train_mod.train(cfg, tmp_path / "run", device="cpu")
    lost = [r for r in caplog.records if "decode process exited" in r.getMessage()]
    assert len(lost) == 1 and "training goes on with the CPU decoding every clip" in lost[0].getMessage()
    epoch = _last_epoch(tmp_path / "run")
    assert epoch["decode"]["decode_process"] is False and epoch["decode"]["gpu_clips"] == 0
    assert epoch["decode"]["cpu_clips"] > 0


def test_stage_reads_a_failed_job_on_the_cpu_and_replaces_an_unreadable_one(videos, tmp_path):
    jobs = _jobs(videos, 3)
    job0 = jobs[0][1]
    broken = job0._replace(data=np.zeros_like(job0.data))  # garbage packets: nothing comes out
    missing = jobs[1][1]._replace(path=str(tmp_path / "gone.mp4"), data=np.zeros_like(jobs[1][1].data))
    reported = []
    process = nvdec.DecodeProcess(CPU, "pyav", threads=1)
    stage = nvdec.DecodeStage(process, CPU, lambda i, e: reported.append((i, str(e))))
    n = 3
    batch = Batch(torch.zeros(n, 3, 8, 64, 64, dtype=torch.uint8), torch.arange(n), torch.arange(n),
                  torch.ones(n, dtype=torch.bool), None, [broken, missing, jobs[2][1]])
    try:
        out = list(stage.epoch(iter([batch])))[0]
    finally:
        stage.close()
    assert stage.fallbacks == 2 and len(reported) == 1 and "gone.mp4" in reported[0][1]
    assert out.clip[0].float().mean() > 0 and torch.equal(out.clip[1], out.clip[0])  # row 1 took row 0's clip
    assert out.label.tolist() == [0, 0, 2]


def test_choosing_the_decoder(tempo_data, caplog, monkeypatch):  # noqa: F811
    cfg = tiny_cfg(tempo_data)
    with caplog.at_level(logging.INFO):
        assert decoding.plan_decoding(replace(cfg.data, decoder="auto"), CPU).share is None
    assert "decoder auto: pyav (NVDEC not usable: device cpu is not a CUDA GPU)" in caplog.text
    with pytest.raises(TpnError, match="^data.decoder nvdec: device cpu is not a CUDA GPU$"):
        decoding.plan_decoding(replace(cfg.data, decoder="nvdec"), CPU)
    assert decoding.plan_decoding(replace(cfg.data, decoder="pyav"), CPU).share is None
    monkeypatch.setenv("TPN_DECODER_STANDIN", "pyav")
    setup = decoding.plan_decoding(replace(cfg.data, decoder="auto"), CPU)
    assert isinstance(setup.decoder, Routed) and float(setup.share[0]) == 0  # measured at the first epoch
    ds = build_dataset(cfg.data, "train", decoder=setup.decoder)
    stage = decoding.build_stage(setup, ds, replace(cfg.data, decoder="auto"), CPU, workers=2, batch=4, in_flight=2)
    try:
        m = decoding.calibrate(ds, stage.process, workers=2, clips=8)
        assert 0 < m["share"] <= 1 and m["gpu_clips_per_s"] > 0
        assert set(m["predicted"]) == {"pyav", "nvdec", "hybrid"} and min(m["predicted"].values()) > 0
        assert list(stage.epoch(iter([]))) == [] and stage.policy.measured["share"] > 0
        trial = stage.policy.trial
        assert isinstance(trial, decoding.Trial) and [n for n, _ in trial.candidates][0] == "pyav"
        assert float(setup.share[0]) == 0  # the trial starts at share 0
    finally:
        stage.close()


def test_hybrid_times_its_calibrated_share_against_its_neighbours_from_the_first_epoch(tempo_data, monkeypatch):  # noqa: F811
    """A calibration can miss (the rates in training are not the rates alone): the first epoch already
    times the measured share and +-0.1 in training, starting from the lower one."""
    cfg = tiny_cfg(tempo_data, ["data.decoder=hybrid"])
    monkeypatch.setenv("TPN_DECODER_STANDIN", "pyav")
    setup = decoding.plan_decoding(cfg.data, CPU)
    ds = build_dataset(cfg.data, "train", decoder=setup.decoder)
    stage = decoding.build_stage(setup, ds, cfg.data, CPU, workers=2, batch=4, in_flight=2)
    try:
        assert list(stage.epoch(iter([]))) == []
        m, trial = stage.policy.measured["share"], stage.policy.trial
        assert isinstance(trial, decoding.Trial) and "epoch 1" in trial.what
        want = sorted({round(min(1.0, max(0.05, m + d)), 3) for d in (-0.1, 0.0, 0.1)})
        assert [v for _, v in trial.candidates] == want and float(setup.share[0]) == pytest.approx(want[0])
    finally:
        stage.close()


def test_stage_fills_every_row_of_a_batch_of_multi_clip_items(tempo_data):  # noqa: F811
    """Through the loader (collate_clips: k clips an item, one job an item) and the decode process,
    each row holds the clip the CPU path makes for it."""
    from tpn.data.loader import build_loader

    cfg = tiny_cfg(tempo_data, ["data.clips_per_decode=2", "train.batch_size=4", "data.augment_on_device=true"])
    cpu_ds = build_dataset(cfg.data, "train")
    ds = build_dataset(cfg.data, "train", decoder=_routed(cpu_ds, 1.0))
    stage = nvdec.DecodeStage(nvdec.DecodeProcess(CPU, "pyav", threads=2), CPU, ds.report)
    try:
        batch = next(stage.epoch(iter(build_loader(ds, 4, 0, persistent_workers=False))))
    finally:
        stage.close()
    assert batch.job is None and batch.clip.shape[0] == 4 and stage.gpu_clips % 4 == 0 and stage.gpu_clips >= 4
    assert stage.stats()["process_busy_s"] > 0  # the decode process's own time on the requests
    cpu = [cpu_ds[i] for i in range(2)]
    assert torch.equal(batch.clip, torch.cat([c.clip for c in cpu]))
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
    job = _job(path, v, wanted)
    rgb = nvdec.DecoderPool(CPU, 1, nvdec.PyAVStream).decode([(0, job)])[0]
    ref = torch.from_numpy(read_video_frames(path, wanted)).permute(0, 3, 1, 2)
    assert torch.equal(rgb, ref)


def test_auto_keeps_the_share_that_trained_faster(tempo_data, caplog):  # noqa: F811
    """`Trial`: batches the step takes are timed at share 0 and at the measured share, the first `lag`
    after each switch skipped; the faster share is kept and logged."""
    share = share_value(0.5)
    now = [0.0]
    notes = []
    trial = decoding.Trial(share, [("pyav", 0.0), ("hybrid", 0.3)], lag=3, window=4, batch=8,
                           log_choice=lambda fmt, *a: notes.append(fmt % a), clock=lambda: now[0], what="decoder auto")
    assert float(share[0]) == 0
    for step_s in [9, 9, 9, 1, 1, 1, 1] + [9, 9, 9, 0.5, 0.5, 0.5, 0.5]:  # lag steps are not timed
        if trial.seen == 0 and trial.phase == 1:
            assert float(share[0]) == pytest.approx(0.3)
        now[0] += step_s
        trial.tick()
    assert trial.rates == {"pyav": 8.0, "hybrid": 16.0} and trial.done
    assert float(share[0]) == pytest.approx(0.3)
    assert notes == ["decoder auto: hybrid (measured in training: pyav 8.0, hybrid 16.0 clips/s; GPU share 0.30)"]
    slow = decoding.Trial(share, [("pyav", 0.0), ("hybrid", 0.3)], lag=1, window=2, batch=8,
                          log_choice=lambda *a: None, clock=lambda: now[0])
    for step_s in [1, 1, 1, 1, 5, 5]:
        now[0] += step_s
        slow.tick()
    assert slow.done and float(share[0]) == 0  # hybrid trained slower: back to pyav


def test_the_stage_tells_its_policy_of_epochs_and_batches_taken():
    events = []
    policy = type("P", (), {"start_epoch": lambda self, stage: events.append("epoch"),
                            "tick": lambda self: events.append("tick")})()
    stage = nvdec.DecodeStage(None, CPU, lambda i, e: None, policy=policy)
    batches = [Batch(torch.zeros(2, 3, 4, 8, 8, dtype=torch.uint8), torch.zeros(2), torch.zeros(2),
                     torch.ones(2, dtype=torch.bool)) for _ in range(5)]
    loader = type("L", (), {"__iter__": lambda self: (events.append("iter"), iter(batches))[1]})()
    # the policy first (a calibration before the loader's workers start), then the loader, then each batch
    assert len(list(stage.epoch(loader))) == 5 and events == ["epoch", "iter"] + ["tick"] * 5


def test_a_hybrid_share_is_re_timed_against_its_neighbours_each_epoch():
    """After the first epoch's choice, each epoch starts a trial of the share and +-0.1 (rates drift)."""
    share = share_value(0.4)
    notes = []
    policy = decoding.Policy(share, None, None, "hybrid", workers=2, batch=8, lag=1, given=False, window=2,
                             log_choice=lambda fmt, *a: notes.append(fmt % a))
    policy.measured = {"share": 0.4}  # the first epoch's calibration is done
    stage = type("S", (), {"process": object()})()
    policy.start_epoch(stage)
    assert [v for _, v in policy.trial.candidates] == [0.3, 0.4, 0.5]
    now = [0.0]
    policy.trial.clock = lambda: now[0]
    for step_s in [1, 2, 2] + [1, 1, 1] + [1, 3, 3]:  # share 0.4 trains fastest
        now[0] += step_s
        policy.tick()
    assert policy.trial.done and float(share[0]) == pytest.approx(0.4)
    assert "re-timed" in notes[-1] and "GPU share 0.40" in notes[-1]
