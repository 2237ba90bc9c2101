"""The benchmark scripts' library parts, run small on the CPU: the data-loader and check
benchmarks end to end and the benchmarks' training step."""
import torch

from benchmarks.bench_check import run as run_check
from benchmarks.bench_data import TRAIN_MODES, run
from benchmarks.train_step import make_train_step
from tests.test_data_prepare import keyframes
from tpn.accel import Execution
from tpn.config import load_config
from tpn.models.build import build_model


def test_bench_data_runs_on_original_and_prepared(tmp_path):
    """`benchmarks/bench_data.py` at a tiny size: both encodings, every mode with and without
    skipping unneeded frames, clips per decode, frames decoded per clip, positive rates."""
    res = run(tmp_path, videos=1, clips=2, test_videos=1, log=lambda *_: None, sizes=((128, 96),), seconds=3)
    assert [r["encoding"] for r in res["results"]] == ["original", "prepared"]
    for r in res["results"]:
        assert all(r[f"{m}_clips_per_cpu_s"] > 0 for m in TRAIN_MODES) and r["test30_videos_per_cpu_s"] > 0
    assert set(res["prepared_over_original"]) == {"128x96"}
    assert all(r[f"{m}_clips_per_cpu_s_decode_all"] > 0 for m in TRAIN_MODES for r in res["results"])
    assert set(res["results"][0]["skip_over_decode_all"]) == {*TRAIN_MODES, "test30"}
    assert all(v > 0 for r in res["results"] for v in r["train_recipe_dev_clips_per_decode"].values())
    orig, prep = (r["frames_decoded_per_train_clip"] for r in res["results"])
    assert orig["skip"] < orig["decode_all"] and prep["skip"] == prep["decode_all"]  # prepared: no B-frames
    assert keyframes(tmp_path / "x264_medium" / "prepared_gop2" / "128x96_0.mp4")[:3] == [0, 2, 4]


def test_benchmark_train_step_learns_a_fixed_batch():
    torch.manual_seed(0)
    cfg = load_config("tpn_tiny_synth", ["model.backbone.base_channels=4", "model.backbone.stage_blocks=[1,1,1,1]",
                                         "model.neck.out_channels=16", "model.neck.groups=4", "model.head.dropout=0"])
    model = build_model(cfg).train()
    step = make_train_step(model, cfg.data.mean, cfg.data.std, Execution(), cfg.train, lr=0.05)
    x8 = torch.randint(0, 255, (4, 3, 4, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3])
    losses = [float(step(x8, labels)) for _ in range(8)]
    assert losses[-1] < losses[0]


def test_bench_check_times_every_mode(tmp_path):
    res = run_check(tmp_path, size=(96, 64), seconds=1, calls=2, log=lambda *_: None)
    assert res["frames"] == 30 and (tmp_path / "96x64_rot90.mp4").is_file()
    assert set(res["cpu_ms_per_call"]) == {"open_3_frames", "check_video", "train_clip", "train_clip_rot90"}
    assert all(v > 0 for v in res["cpu_ms_per_call"].values())


def test_nvdec_probe_cpu_parts_decode_exactly_what_a_sequential_decode_gives(tmp_path):
    """`benchmarks/nvdec_probe.py`'s GPU-free half: PyAV demux + Annex B filter + clip packet
    selection, fed to PyAV's own decoder as the stand-in for NVDEC, on B-pyramid H.264 and HEVC."""
    import numpy as np

    from benchmarks.nvdec_probe import PyAVAnnexBDecoder, decode_clip, demux_annexb
    from tpn.data.synthetic import render, write_mp4
    from tpn.data.video import read_all_frames

    for codec in ("h264", "hevc"):
        path = tmp_path / f"{codec}.mp4"
        write_mp4(path, render("right_slow", (128, 96), 90, np.random.default_rng(0)), fps=30, preset="medium", codec=codec)
        video, ref = demux_annexb(path), read_all_frames(path)
        assert len(video.data) == len(ref) == 90 and all(d[:4] == b"\0\0\0\1" or d[:3] == b"\0\0\1" for d in video.data)
        assert sorted(video.index.tolist()) == list(range(90)) and video.nonref.sum() > 20  # B-frames, reordered
        decoder = PyAVAnnexBDecoder(codec)  # one decoder for every clip: flushed and reused
        sent = {}
        for drop in (True, False):
            for wanted in ([40, 48, 56, 64, 72], [0, 1, 89], [33]):
                got, sent[drop, len(wanted)] = decode_clip(video, wanted, decoder, drop)
                assert all(np.array_equal(got[i], ref[i]) for i in wanted), (codec, drop, wanted)
        assert sent[True, 5] < sent[False, 5] <= 90


def test_nvdec_probe_nv12_conversion_matches_pyav_rgb(tmp_path):
    """The probe's NV12->RGB (BT.601, limited range, nearest chroma) is PyAV's rgb24 to within
    swscale's fixed-point rounding; BT.709 is visibly off (the probe reports each on NVDEC's planes)."""
    import av
    import numpy as np

    from benchmarks.nvdec_probe import nv12_to_rgb, yuv_planes
    from tpn.data.synthetic import render, write_mp4

    path = tmp_path / "v.mp4"
    write_mp4(path, render("up_fast", (128, 96), 3, np.random.default_rng(1)), fps=30)
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        y, u, v = yuv_planes(frame)
        ref = frame.to_ndarray(format="rgb24").astype(int)
    uv = torch.from_numpy(np.stack([u, v], -1))
    d601 = np.abs(nv12_to_rgb(torch.from_numpy(y.copy()), uv).numpy() - ref)
    d709 = np.abs(nv12_to_rgb(torch.from_numpy(y.copy()), uv, "bt709").numpy() - ref)
    assert d601.max() <= 3 and d601.mean() < 1.5 and d709.mean() > 3 * d601.mean()


def test_bench_e2e_peer_make_and_summary_on_tiny_sets(tmp_path, capsys):
    """`benchmarks/bench_e2e_peer.py` on the CPU at a tiny size: `--part make` writes x264 (B-frames,
    one keyframe) and x265 sets with the same content and the `tpn data prepare`d copy; the tpn part's
    decode measurements run, once (a second call skips them); `--part summary` turns records into
    ratios and into the bounds that decoding puts on each target."""
    import json

    import pytest

    from benchmarks.bench_e2e_peer import main, read_jsonl, video_paths
    from tpn.data.video import VideoReader

    d = tmp_path / "e2e"
    sets = ["--dir", str(d), "--sets", "h264_128x96,hevc_128x96", "--prepare", "h264_128x96"]
    main(["--part", "make", *sets, "--videos", "3", "--seconds", "2", "--make-workers", "2"])
    made = {r["set"]: r for r in read_jsonl(d / "make.jsonl") if r["what"] == "make"}
    assert made["h264_128x96"]["frames"] == made["hevc_128x96"]["frames"] == 60
    assert made["h264_128x96"]["keyframes_first_video"] == 1 and made["h264_128x96_prepared"]["videos"] == 3
    for name, codec in (("h264_128x96", "h264"), ("hevc_128x96", "hevc"), ("h264_128x96_prepared", "h264")):
        paths = video_paths(d / name)
        assert len(paths) == 3 and (d / name / "labels.txt").read_text().count("\n") == 10
        with VideoReader(paths[0]) as r:
            assert r.stream.codec_context.name == codec
            assert len(r.keyframes) == (30 if name.endswith("prepared") else 1)  # prepare: a keyframe every 2

    tpn = ["--part", "tpn", *sets, "--config", "tpn_tiny_synth", "--device", "cpu", "--only", "pyav_fps,frames"]
    main(tpn)
    main(tpn)  # everything already measured: nothing added
    recs = [r for r in read_jsonl(d / "tpn.jsonl") if r["what"] != "machine"]
    assert sorted((r["what"], r["set"]) for r in recs) == sorted(
        (w, s) for w in ("pyav_fps", "frames") for s in ("h264_128x96", "hevc_128x96", "h264_128x96_prepared"))
    frames = {r["set"]: r for r in recs if r["what"] == "frames"}
    orig = frames["h264_128x96"]
    assert 0 < orig["train_frames_per_clip"] < orig["train_frames_per_clip_decode_all"] <= 60  # B-frames skipped

    # the mmaction2 and GPU figures as a device run writes them (made up here: the arithmetic is tested)
    fake = [dict(part="tpn", what="gpu_step", batch=32, clips_per_s=500.0),
            dict(part="tpn", what="gpu_test", clips_per_s=None, videos_per_s=50.0),
            dict(part="tpn", what="train", set="h264_128x96", decoder="pyav", batch=32, clips_per_s=400.0),
            dict(part="tpn", what="loader", set="h264_128x96", decoder="pyav", batch=32, clips_per_s=420.0),
            dict(part="tpn", what="train", set="h264_128x96_prepared", decoder="pyav", batch=32, clips_per_s=450.0),
            dict(part="tpn", what="test", set="h264_128x96", decoder="pyav", videos_per_s=60.0),
            dict(part="peer", what="peer_e2e", set="h264_128x96", batch=32, clips_per_s=200.0),
            dict(part="peer", what="peer_e2e", set="h264_128x96", batch=64, clips_per_s=250.0),
            dict(part="peer", what="peer_test", set="h264_128x96", videos_per_s=25.0),
            dict(part="tpn", what="train", set="hevc_128x96", decoder="nvdec", batch=32, error="ConfigError: x")]
    (d / "fake.jsonl").write_text("".join(json.dumps(dict(r, decoder=r.get("decoder", ""), set=r.get("set", ""))) + "\n"
                                          for r in fake))
    out = tmp_path / "summary.json"
    main(["--part", "summary", "--dir", str(d), "--inputs", str(d / "make.jsonl"), str(d / "tpn.jsonl"),
          str(d / "fake.jsonl"), "--out", str(out), "--nvdec-fps", "6000"])
    res = json.loads(out.read_text())
    s = res["sets"]["h264_128x96"]
    assert s["peer_best_e2e_clips_per_s"] == 250.0
    assert s["ratios"]["e2e_over_peer"] == {"pyav": 1.6} and s["ratios"]["e2e_over_gpu_step"] == {"pyav": 0.8}
    assert s["ratios"]["prepared_over_gpu_step"] == {"pyav": 0.9} and s["ratios"]["test_over_peer"] == {"pyav": 2.4}
    cores = res["machine"]["tpn"]["cores"]
    dec = s["decode"]
    cpu = cores * dec["pyav_fps_per_core"] / dec["train_frames_per_clip"]
    assert s["bounds"]["train_clips_per_s"]["pyav"] == pytest.approx(cpu, abs=0.05)
    assert s["bounds"]["train_clips_per_s"]["hybrid"] == pytest.approx(cpu + 6000 / dec["train_frames_per_clip"], abs=0.1)
    rows = {(t["target"], t["set"], t["decoder"]): t for t in res["targets"]}
    t = rows["e2e_over_peer", "h264_128x96", "pyav"]
    assert t["met"] and t["bound"] == pytest.approx(min(500.0, cpu) / 250.0, abs=1e-3)
    assert rows["test_over_peer", "h264_128x96", "pyav"]["met"] and not rows["prepared_over_gpu_step", "h264_128x96", "pyav"]["met"]
    digests = [r["files"] for r in read_jsonl(d / "tpn.jsonl") if r["what"] == "machine"]
    assert all(f[n] == made[n]["digest"] for f in digests for n in made)  # the files each call read
    assert res["same_files_in_all_calls"] == {"h264_128x96": True, "hevc_128x96": True}
    assert res["errors"] == [dict(part="tpn", what="train", set="hevc_128x96", decoder="nvdec", batch=32, error="ConfigError: x")]
    with pytest.raises(SystemExit, match="--sets: 'h264_big' is not CODEC_WIDTHxHEIGHT"):
        main(["--part", "make", "--dir", str(d), "--sets", "h264_big"])
