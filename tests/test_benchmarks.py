"""The benchmark scripts' library parts, run small on the CPU: the data-loader and check
benchmarks end to end and the benchmarks' training step."""
from pathlib import Path

import pytest
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


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_benchmarks_take_the_machine_and_their_timer_from_tpn_bench():
    """One `machine_info` (tpn.bench) for every benchmark: none defines its own, its own timer or
    CPU count, or asks torch or `platform` for the machine; it names the CPU-only machine here."""
    import ast

    from tpn.bench import machine_info

    copies = {"machine_info", "cpu_cores", "cpu_quota", "versions", "sync", "_sync", "timed", "_timed"}
    asks = ("get_device_name", "get_device_properties", "platform.", "/proc/cpuinfo", "cpu.max", "nvidia-smi")
    found = []
    for path in sorted(BENCHMARKS.glob("*.py")) + sorted(BENCHMARKS.glob("*.sh")):
        text = path.read_text()
        found += [f"{path.name}: {a}" for a in asks if a in text]
        if path.suffix == ".py":
            found += [f"{path.name}: def {n.name}" for n in ast.walk(ast.parse(text))
                      if isinstance(n, ast.FunctionDef) and n.name in copies]
    assert not found, found
    info = machine_info(("numpy", "no-such-package"))
    assert info["cores"] >= 1 and info["torch"] == torch.__version__ and info["ffmpeg"] and info["date"].endswith("UTC")
    assert info["packages"]["no-such-package"] is None and info["packages"]["numpy"]
    assert ("gpu" in info) == torch.cuda.is_available()


def test_benchmark_scripts_answer_help(monkeypatch, capsys):
    """Every benchmark script with options starts and prints its usage (`python benchmarks/X.py --help`)."""
    import os
    import runpy
    import sys

    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])  # a script's folder first, as `python X.py` has it
    monkeypatch.setattr(os, "environ", dict(os.environ))
    scripts = [p for p in sorted(BENCHMARKS.glob("*.py")) if "argparse" in p.read_text()]
    assert len(scripts) >= 12
    for path in scripts:
        monkeypatch.setattr(sys, "argv", [str(path), "--help"])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(path), run_name="__main__")
        assert e.value.code == 0, path.name
        assert "usage:" in capsys.readouterr().out, path.name


class _KeepingStream:
    """NVDEC's contract on the CPU: FFmpeg's decoder (tpn's stand-in), but a frame leaves only when
    the stream's `keep` test passes, as NvdecStream copies out only the frames it is asked for."""

    def __init__(self, codec, device):
        from tpn.data.nvdec import PyAVStream

        self.inner, self.keep = PyAVStream(codec, device), lambda pts: True

    def decode(self, data, pts):
        return [f for f in self.inner.decode(data, pts) if self.keep(f[0])]

    def flush(self):
        return [f for f in self.inner.flush() if self.keep(f[0])]


def test_bench_e2e_peer_nvdec_fps_decodes_every_frame_through_tpn_data_nvdec(tmp_path):
    """bench_e2e_peer's NVDEC frames/s runs on tpn.data.nvdec's demux and decoder streams (no copy of
    them in benchmarks/): each of the threads decodes every frame of every file, counted whether the
    stream returns its frames (PyAVStream) or only asks `keep` about them (NVDEC's way)."""
    import numpy as np

    from benchmarks.bench_e2e_peer import nvdec_fps
    from tpn.data.nvdec import PyAVStream
    from tpn.data.synthetic import render, write_mp4

    for i in range(2):  # x264 medium: B-frames, decoded out of display order
        write_mp4(tmp_path / f"v{i}.mp4", render("right_slow", (128, 96), 30, np.random.default_rng(i)), preset="medium")
    (tmp_path / "videos.txt").write_text("v0.mp4 0\nv1.mp4 1\n")
    for factory in (PyAVStream, _KeepingStream):
        r = nvdec_fps(tmp_path, decoders=2, files=2, device="cpu", factory=factory)
        assert r["frames"] == 2 * 2 * 30 and r["errors"] == [] and r["nvdec_fps"] > 0, factory


def write_test_report(folder, probs, labels, names=("a", "b", "c"), unreadable=()):
    """A `tpn test --view-scores` folder: view_scores.npy [videos, 2 views, classes], predictions.json
    (top-1 of the view average, correct) and metrics.json, as run_test writes them."""
    import json

    import numpy as np

    folder.mkdir(parents=True)
    views = np.asarray(probs, np.float32)
    avg = views.mean(1)
    rows = []
    for i, (p, label) in enumerate(zip(avg, labels)):
        ok = i not in unreadable
        pred = names[int(p.argmax())] if ok else None
        rows.append({"index": i, "path": f"v{i}.mp4", "label": names[label], "readable": ok, "prediction": pred,
                     "correct": (int(p.argmax()) == label) if ok else None})
        if not ok:
            views[i] = np.nan
    np.save(folder / "view_scores.npy", views)
    (folder / "predictions.json").write_text(json.dumps(rows))
    correct = [r["correct"] for r in rows if r["readable"]]
    (folder / "metrics.json").write_text(json.dumps({"top1": sum(correct) / len(correct)}))


def test_precision_summary_counts_the_videos_whose_top1_differs(tmp_path):
    import numpy as np

    from benchmarks.precision_summary import main, summarise

    ref = [[[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]],  # avg a (margin 0.2)
           [[0.2, 0.7, 0.1], [0.2, 0.7, 0.1]],  # b
           [[0.1, 0.2, 0.7], [0.1, 0.2, 0.7]],  # c
           [[0.34, 0.33, 0.33], [0.34, 0.33, 0.33]],  # a by 0.01: the near tie that flips
           [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1]]]  # unreadable in the other run: left out of both
    low = np.array(ref)
    low[3] = [[0.32, 0.35, 0.33], [0.32, 0.35, 0.33]]  # now b
    low[0] += [[-0.01, 0.01, 0], [0, 0, 0]]  # a, 0.005 lower in the average
    labels = [0, 1, 2, 0, 1]
    write_test_report(tmp_path / "fp32", ref, labels)
    write_test_report(tmp_path / "bf16", low, labels, unreadable=(4,))
    s = summarise([("fp32", tmp_path / "fp32"), ("bf16", tmp_path / "bf16")])
    r = s["runs"]["bf16"]
    assert r["videos"] == 4 and r["top1"] == 0.75 and s["runs"]["fp32"]["top1"] == 1.0
    assert r["top1_equal_to_fp32"] == 0.75 and r["videos_differing"] == 1 and not r["meets_99.5%"]
    assert r["differing"] == [{"path": "v3.mp4", "label": "a", "fp32": "a", "prediction": "b",
                               "fp32_top1_minus_top2": pytest.approx(0.01, abs=1e-6)}]
    assert r["max_abs_diff_mean_softmax"] == pytest.approx(0.02, abs=1e-6)
    assert r["mean_abs_diff_mean_softmax"] == pytest.approx((0.005 * 2 + 0.02 + 0.02 + 0) / 12, abs=1e-6)
    assert s["runs"]["fp32"]["top1_equal_to_fp32"] == 1.0 and s["runs"]["fp32"]["max_abs_diff_mean_softmax"] == 0
    assert "use >= 200 videos" in s["warning"]
    assert main([f"fp32={tmp_path / 'fp32'}", f"bf16={tmp_path / 'bf16'}", "--out", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text().count('"videos_differing": 1') == 1
    with pytest.raises(SystemExit, match=r"nope/predictions.json: not found"):
        summarise([("fp32", tmp_path / "fp32"), ("x", tmp_path / "nope")])
    write_test_report(tmp_path / "other", ref[:4], labels[:4])
    with pytest.raises(SystemExit, match=r"other/predictions.json: not the videos of the fp32 run"):
        summarise([("fp32", tmp_path / "fp32"), ("x", tmp_path / "other")])


def test_bench_gpu_ratios_and_the_tuning_mode():
    """bench_gpu's `ratios` from its own records (numbers of the shape it writes), and its mode
    names: +cdt turns on inductor's coordinate-descent tuning only where the mode compiles."""
    from benchmarks.bench_gpu import execution, ratios

    def train(impl, batch, mode, clips, mem=None, reserved=None):
        r = dict(kind="train", impl=impl, batch=batch, mode=mode, clips_per_s=clips)
        if mem:
            r.update(mem_per_clip_gb=mem, reserved_per_clip_gb=reserved or mem)
        return r

    records = [dict(kind="env"), train("tpn", 32, "bf16_cl_compile", 560.0, 0.36, 0.40),
               train("tpn", 128, "bf16_cl_cg", 620.0, 0.01, 0.40), train("tpn", 32, "bf16_cl_compile_cdt", 600.0, 0.30, 0.33),
               dict(kind="train", impl="tpn", batch=256, mode="bf16_cl_cg", error="OOM"),
               train("mmaction2", 32, "amp_fp16", 270.0, 0.40), train("mmaction2", 64, "amp_fp16", 300.0, 0.39),
               train("mmaction2", 32, "plain_cl_compile", 500.0, 0.36),
               dict(kind="test30", impl="tpn", mode="bf16_cl_cg_fold", videos_per_s=62.0),
               dict(kind="test30", impl="mmaction2", mode="amp_fp16", videos_per_s=31.0)]
    r = ratios(records)
    assert r["training"]["ratio"] == pytest.approx(620 / 300, abs=1e-3)  # the peer's own step, not our loop's 500
    assert r["training"]["tpn"] == {"mode": "bf16_cl_cg", "batch": 128, "clips_per_s": 620.0}
    assert r["compiled_loop_b32"]["ratio"] == 1.2 and r["compiled_loop_b32"]["tpn"]["mode"] == "bf16_cl_compile_cdt"
    assert r["compiled_loop_b32_same_mode"]["ratio"] == 1.12
    assert r["test30"]["ratio"] == 2.0
    mem = r["memory_per_clip_b32_vs_mmaction2_amp"]
    assert mem["mmaction2_gb"] == 0.40 and set(mem) == {"mmaction2_gb", "bf16_cl_compile", "bf16_cl_compile_cdt"}
    assert mem["bf16_cl_compile_cdt"] == {"allocated": 0.75, "reserved": 0.825, "clips_per_s": 600.0}
    assert ratios(records[:4]) == {}  # no mmaction2 side: no ratio
    assert execution("bf16_cl_compile_cdt").inductor_tuning and execution("bf16_cl_cg_cdt").compile == "reduce-overhead"
    assert not execution("bf16_cl_cdt").inductor_tuning and not execution("bf16_cl_compile").inductor_tuning
    assert execution("bf16_cl_compile_ab50").activation_budget == 0.5 and execution("bf16_cl_ab50").activation_budget == 1.0


def test_loss_curve_compares_modes_from_the_same_start(tmp_path):
    """benchmarks/loss_curve.py on the CPU with the tiny config: the same seed and clips give the
    fp32 curve bit for bit again; bf16 (CPU autocast) starts from the same weights and differs by
    rounding; both learn the fixed synthetic clips."""
    import json

    from benchmarks.loss_curve import main

    out = tmp_path / "curves.json"
    r = main(["--device", "cpu", "--config", "tpn_tiny_synth", "--size", "32", "--batch", "4", "--clips", "8",
              "--classes", "4", "--steps", "20", "--modes", "fp32,bf16,fp32", "--out", str(out)])
    assert json.loads(out.read_text()) == r
    fp32, bf16, again = (run["losses"] for run in r["runs"])
    assert len(fp32) == 20 and fp32 == again and r["against_first"][1]["max_rel_diff"] == 0.0
    assert abs(bf16[0] - fp32[0]) / fp32[0] < 0.01 and r["against_first"][0]["max_rel_diff"] > 0
    for losses in (fp32, bf16):
        assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


@pytest.mark.slow
def test_precision_study_runs_end_to_end_on_the_cpu(tmp_path):
    """benchmarks/precision_study.sh --tiny: data, training, the tests in fp32 and bf16 (CPU autocast)
    and the summary, with the few-videos warning."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, WORK=str(tmp_path / "w"), RESULTS=str(tmp_path / "r"), TPN=f"{sys.executable} -m tpn.cli",
               EPOCHS="1", PRECISIONS="fp32 bf16",  # fp16 shares bf16's branch; on a CPU it takes 40 s for 8 videos
               PYTHONPATH=os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(["bash", "benchmarks/precision_study.sh", "--tiny"], cwd=repo, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads((tmp_path / "r" / "precision_summary.json").read_text())
    assert list(s["runs"]) == ["fp32", "bf16", "auto"] and s["reference"] == "fp32"
    assert all(r["videos"] == 8 for r in s["runs"].values()) and "use >= 200 videos" in s["warning"]
    assert s["runs"]["bf16"]["max_abs_diff_mean_softmax"] > 0 and s["runs"]["auto"]["max_abs_diff_mean_softmax"] < 1e-6
    assert {p.name for p in (tmp_path / "r").iterdir()} == {
        "precision_summary.json", "predictions_fp32.csv", "predictions_bf16.csv", "train_metrics.jsonl"}


def test_bench_e2e_peer_make_and_summary_on_tiny_sets(tmp_path, capsys):
    """`benchmarks/bench_e2e_peer.py` on the CPU at a tiny size: `--part make` writes x264 (B-frames,
    one keyframe) and x265 sets with the same content and the `tpn data prepare`d copy; the tpn part's
    decode measurements run, once (a second call skips them); `--part summary` turns records into
    ratios and into the bounds that decoding puts on each target."""
    import json

    import pytest

    from benchmarks.bench_e2e_peer import main, need_for, read_jsonl, video_paths
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
    assert t["need"] == 2.0 and not t["met"] and t["bound"] == pytest.approx(min(500.0, cpu) / 250.0, abs=1e-3)
    t = rows["test_over_peer", "h264_128x96", "pyav"]
    assert t["need"] == 2.5 and not t["met"] and not rows["prepared_over_gpu_step", "h264_128x96", "pyav"]["met"]
    assert rows["e2e_over_gpu_step", "h264_128x96", "pyav"]["met"] is None  # no target for this set
    assert ("e2e_over_decode_bound", "h264_128x96", "pyav") not in rows  # the 720p set's target only
    assert need_for("e2e_over_gpu_step", "h264_340x256") == 0.92 and need_for("e2e_over_decode_bound", "h264_1280x720") == 0.85
    digests = [r["files"] for r in read_jsonl(d / "tpn.jsonl") if r["what"] == "machine"]
    assert all(f[n] == made[n]["digest"] for f in digests for n in made)  # the files each call read
    assert res["same_files_in_all_calls"] == {"h264_128x96": True, "hevc_128x96": True}
    assert res["errors"] == [dict(part="tpn", what="train", set="hevc_128x96", decoder="nvdec", batch=32, error="ConfigError: x")]
    with pytest.raises(SystemExit, match="--sets: 'h264_big' is not CODEC_WIDTHxHEIGHT"):
        main(["--part", "make", "--dir", str(d), "--sets", "h264_big"])


def test_profile_reader_groups_a_clips_time(tmp_path):
    """benchmarks/profile_reader.py on 3 s videos: the stages cover the profiled time, decoding is
    among them, and with the index cache the demux pass is gone from a clip's time."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "p.json"
    subprocess.run([sys.executable, "benchmarks/profile_reader.py", "--dir", str(tmp_path / "v"), "--clips", "6",
                    "--seconds", "3", "--videos", "2", "--sets", "128x96", "--parts", "cache", "--out", str(out)],
                   cwd=repo, check=True, capture_output=True, timeout=300)
    r = json.loads(out.read_text())
    (res,) = r["results"]
    for key in ("profile_no_cache", "profile"):
        share = res[key]["share"]
        assert abs(sum(share.values()) - 1) < 0.01 and share["seek_and_decode"] > 0.2 and r["clips"] == 6
    ms = res["profile"]["stage_cpu_ms_per_clip"], res["profile_no_cache"]["stage_cpu_ms_per_clip"]
    assert ms[0]["index"] < ms[1]["index"] / 2
    assert set(res["index_cache"]) == {"off", "on", "on_over_off_per_cpu_s"}


def test_bn_bandwidth_shapes_are_the_r50_backbones_batchnorms():
    """benchmarks/bn_bandwidth.py's (channels, side, count) list is what the TPN R50 8x8 backbone's
    BatchNorms see on 8x224x224 clips (meta tensors: shapes only)."""
    from collections import Counter

    from benchmarks.bn_bandwidth import SHAPES

    with torch.device("meta"):
        backbone = build_model(load_config("tpn_r50_8x8_k400")).backbone
    seen = Counter()
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.register_forward_hook(lambda m, i, o: seen.update([(o.shape[1], o.shape[3], o.shape[4], o.shape[2])]))
    backbone(torch.empty(2, 3, 8, 224, 224, device="meta"))
    assert all(h == w and t == 8 for _, h, w, t in seen)
    assert sorted((c, h, n) for (c, h, _, _), n in seen.items()) == sorted(SHAPES)


def test_e2e_summary_takes_sets_made_on_another_machine():
    """A set made on the development machine (no GPU) and measured on the device: the GPU check
    compares the measuring parts only; a peer part on another GPU is still flagged."""
    from benchmarks.bench_e2e_peer import summarise

    def machine(part, gpu, at):
        return {"part": part, "what": "machine", "gpu": gpu, "cores": 16, "files": {}, "at": at}

    made = {"part": "make", "what": "make", "set": "h264_1280x720", "codec": "h264", "size": [1280, 720],
            "videos": 32, "at": "2026-12-07 19:16:00"}
    records = [machine("make", None, "2026-12-07 19:06:00"), made,
               machine("tpn", "H100", "2026-12-08 10:05:00"), machine("peer", "H100", "2026-12-08 10:10:00")]
    res = summarise(records)
    assert res["same_gpu_in_all_parts"] and res["made"]["h264_1280x720"]["videos"] == 32
    assert not summarise(records + [machine("peer", "H200", "2026-12-08 11:00:00")])["same_gpu_in_all_parts"]
