"""tpn data prepare: short-GOP re-encoding keeps every frame and the list, skips broken files."""
import json

import numpy as np

from tpn.data.prepare import prepare_list
from tpn.data.synthetic import render, write_mp4
from tpn.data.video import SEEK_MIN_SKIP_NO_REORDER, VideoReader, probe_video, read_all_frames


def keyframes(path):
    import av

    with av.open(str(path)) as c:
        return [i for i, p in enumerate(c.demux(c.streams.video[0])) if p.size and p.is_keyframe]


def decode_order_pts(path):
    import av

    with av.open(str(path)) as c:
        return [p.pts for p in c.demux(c.streams.video[0]) if p.size]


def test_prepare_reencodes_with_short_gop(tmp_path):
    src = tmp_path / "src"
    frames = render("right_slow", (96, 64), 40, np.random.default_rng(0))
    write_mp4(src / "a" / "v1.mp4", frames, preset="veryfast")  # x264 default GOP, B-frames (as downloads)
    (src / "broken.mp4").write_text("not a video")
    (src / "list.txt").write_text("a/v1.mp4 0\nbroken.mp4 1\n")
    assert keyframes(src / "a" / "v1.mp4") == [0]
    rep = prepare_list(src / "list.txt", str(src), tmp_path / "out", short_side=32, gop=8, workers=1, progress=False)
    out = tmp_path / "out" / "a" / "v1.mp4"
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (40, 32, 48)
    assert keyframes(out) == [0, 8, 16, 24, 32]
    assert decode_order_pts(src / "a" / "v1.mp4") != sorted(decode_order_pts(src / "a" / "v1.mp4"))  # B-frames
    assert decode_order_pts(out) == sorted(decode_order_pts(out))  # none in the rewrite
    with VideoReader(out) as r:
        assert r.min_skip == SEEK_MIN_SKIP_NO_REORDER  # so the reader seeks even for short skips
        assert r.fast_index  # tagged by prepare: index from the header, no demux pass
    assert (tmp_path / "out" / "list.txt").read_text() == "a/v1.mp4 0\n"
    assert [f["path"].endswith("broken.mp4") for f in rep["failed"]] == [True]
    assert json.loads((tmp_path / "out" / "list.prepare.json").read_text())["written"] == 1
    # same content: the re-encoded frames are the (downscaled) originals
    got = read_all_frames(out).astype(np.float32).mean(axis=(1, 2, 3))
    ref = frames.astype(np.float32).mean(axis=(1, 2, 3))
    assert np.abs(got - ref).max() < 6


def test_prepared_fast_index_is_exact_and_falls_back(tmp_path):
    """The header-only index of a prepared video gives exactly the frames of a sequential
    decode; an index that does not hold (here: corrupted) falls back to demuxing, same frames."""
    src = tmp_path / "v.mp4"
    write_mp4(src, render("up_fast", (64, 48), 37, np.random.default_rng(1)), preset="veryfast")
    out = tmp_path / "p.mp4"
    from tpn.data.prepare import reencode

    reencode(src, out, short_side=48, gop=2)
    ref = read_all_frames(out)
    picks = np.array([36, 0, 5, 17, 18, 30, 5])
    with VideoReader(out) as r:
        assert r.fast_index and r.num_frames == 37
        assert np.array_equal(r.get_frames(picks), ref[picks])
    with VideoReader(out) as r:
        r.timestamps = r.timestamps + 1  # an index that does not match the stream
        assert np.array_equal(r.get_frames(picks), ref[picks])
        assert not r.fast_index  # re-indexed from the packets
    with VideoReader(src) as r:
        assert not r.fast_index  # untagged videos are demuxed as before


def test_a_rerun_keeps_finished_rewrites_of_the_same_settings(tmp_path):
    """An interrupted prepare resumes: finished rewrites (renamed from .part when complete) with the
    same settings are kept, a leftover .part or other settings are encoded again."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for name in ("v1", "v2", "v3"):
        write_mp4(src / f"{name}.mp4", render("right_slow", (64, 48), 12, rng), preset="veryfast")
    (src / "list.txt").write_text("v1.mp4 0\nv2.mp4 0\nv3.mp4 0\n")
    out = tmp_path / "out"
    first = prepare_list(src / "list.txt", str(src), out, short_side=32, gop=4, workers=1, progress=False)
    assert (first["written"], first["kept_from_earlier_run"]) == (3, 0)
    (out / "v2.mp4").rename(out / "v2.mp4.part")  # as if stopped while writing v2
    stamps = {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in ("v1", "v3")}
    again = prepare_list(src / "list.txt", str(src), out, short_side=32, gop=4, workers=1, progress=False)
    assert (again["written"], again["kept_from_earlier_run"]) == (3, 2)
    assert {n: (out / f"{n}.mp4").stat().st_mtime_ns for n in ("v1", "v3")} == stamps
    assert probe_video(out / "v2.mp4").num_frames == 12 and not (out / "v2.mp4.part").exists()
    other = prepare_list(src / "list.txt", str(src), out, short_side=32, gop=2, workers=1, progress=False)
    assert other["kept_from_earlier_run"] == 0
    import av

    with av.open(str(out / "v1.mp4")) as c:
        assert c.metadata["comment"] == "tpn-prepare gop=2 short_side=32 crf=23 preset=veryfast"
    with VideoReader(out / "v1.mp4") as r:
        assert r.fast_index  # the longer tag still gives the reader its GOP
