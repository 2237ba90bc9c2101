"""Decoding: the seeking reader returns exactly the frames a sequential decode gives."""
import numpy as np
import pytest

from tpn.data.synthetic import render, write_mp4
from tpn.data.video import VideoError, VideoReader, read_all_frames, read_clip, read_rawframes, read_video_frames


@pytest.fixture(scope="module")
def synth_bframe_videos(tmp_path_factory):
    """Real H.264 with B-frames (as in Kinetics), default long GOP and a short GOP of 6."""
    d = tmp_path_factory.mktemp("bvideos")
    frames = render("left_fast", (64, 48), 90, np.random.default_rng(0))
    out = {}
    for gop in (None, 6):
        p = d / f"gop{gop}.mp4"
        write_mp4(p, frames, gop=gop, preset="veryfast")
        out[gop] = p
    return out


@pytest.mark.parametrize("gop", [None, 6])
def test_seeking_reader_returns_exactly_the_requested_frames(synth_bframe_videos, gop):
    path = synth_bframe_videos[gop]
    reference = read_all_frames(path)
    assert reference.shape == (90, 48, 64, 3)
    with VideoReader(path) as r:
        assert r.num_frames == 90
        assert r.keyframes[0] == 0
        if gop == 6:
            assert len(r.keyframes) >= 90 // 6
        r.min_skip = 0  # seek whenever a keyframe lies ahead: the most seeking
        rng = np.random.default_rng(1)
        cases = [[0, 1, 2], [7, 15, 23, 31], [89], [40, 12, 40, 3], [30, 60, 88, 89]]
        cases += [list(rng.integers(0, 90, 8)) for _ in range(8)]
        for idx in cases:
            assert np.array_equal(r.get_frames(idx), reference[idx]), idx
    for idx in cases:  # default policy and plain sequential decoding
        assert np.array_equal(read_video_frames(path, idx), reference[idx])
        assert np.array_equal(read_video_frames(path, idx, seek=False), reference[idx])
    with pytest.raises(VideoError, match="frame 90 requested, the video has 90 frames"):
        read_video_frames(path, [10, 90])


def test_read_clip_opens_once_and_picks_from_the_frame_count(synth_bframe_videos):
    path = synth_bframe_videos[6]
    seen = []
    frames, idx = read_clip(path, lambda n: seen.append(n) or np.array([[5, 7], [80, 82]]))
    assert seen == [90] and idx.shape == (2, 2)
    assert np.array_equal(frames, read_all_frames(path)[[5, 7, 80, 82]])


def test_broken_files_raise_video_error(tmp_path, synth_bframe_videos):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video\n")
    data = synth_bframe_videos[None].read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    fast = tmp_path / "fast.mp4"  # moov atom first: the cut-off half still opens
    write_mp4(fast, render("up_slow", (64, 48), 90, np.random.default_rng(2)), faststart=True)
    data = fast.read_bytes()
    (tmp_path / "trunc_fast.mp4").write_bytes(data[: len(data) // 2])
    expect = {"zero.mp4": "zero-byte", "text.mp4": "cannot open", "trunc.mp4": "cannot open",
              "trunc_fast.mp4": "truncated", "missing.mp4": "file not found"}
    for name, msg in expect.items():
        with pytest.raises(VideoError, match=msg):
            read_video_frames(tmp_path / name, [0, 1])


def test_rawframe_folder(tmp_path):
    from PIL import Image

    frames = render("up_slow", (32, 24), 6, np.random.default_rng(0))
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"img_{i + 1:05d}.png")
    got = read_rawframes(tmp_path, [0, 5, 2, 5], template="img_{:05d}.png")
    assert np.array_equal(got, frames[[0, 5, 2, 5]])
    with pytest.raises(VideoError, match="img_00007.png: frame file not found"):
        read_rawframes(tmp_path, [6], template="img_{:05d}.png")


# ------------------------------------------------------------------ skipping unneeded frames
@pytest.fixture(scope="module")
def skip_videos(tmp_path_factory):
    """x264 default (medium: 3 B-frames, b-pyramid) long and short GOP, a `tpn data prepare`d
    copy, and HEVC (x265 defaults: open GOP, B-frames, sub-layer non-reference pictures)."""
    from tpn.data.prepare import reencode

    d = tmp_path_factory.mktemp("skip")
    frames = render("down_right_fast", (64, 48), 120, np.random.default_rng(3))
    out = {"x264": d / "x264.mp4", "x264_gop12": d / "x264_gop12.mp4", "prepared": d / "prepared.mp4",
           "hevc": d / "hevc.mp4", "hevc_gop24": d / "hevc_gop24.mp4"}
    write_mp4(out["x264"], frames, preset="medium")
    write_mp4(out["x264_gop12"], frames, preset="medium", gop=12)
    reencode(out["x264"], out["prepared"], short_side=48, gop=4)
    write_mp4(out["hevc"], frames, preset="medium", codec="hevc")
    write_mp4(out["hevc_gop24"], frames, preset="medium", codec="hevc", gop=24)
    return out


def _index_sets(n: int) -> list:
    from tpn.data import sampling

    rng = np.random.default_rng(7)
    sets = [sampling.train_indices(n, 8, 8, rng) for _ in range(12)]  # training clips
    sets += [sampling.train_indices(n, 4, 2, rng) for _ in range(6)]
    sets += [sampling.test_indices(n, 8, 8, 10).reshape(-1), sampling.test_indices(n, 4, 4, 3).reshape(-1)]
    sets += [rng.integers(0, n, int(rng.integers(1, 10))) for _ in range(12)]  # any order, repeats
    return sets + [[n - 1], [0], [1]]


@pytest.mark.parametrize("name", ["x264", "x264_gop12", "prepared", "hevc", "hevc_gop24"])
def test_frames_not_needed_are_not_decoded_and_frames_stay_exact(skip_videos, name):
    path = skip_videos[name]
    reference = read_all_frames(path)
    decoded = {True: 0, False: 0}
    for idx in _index_sets(len(reference)):
        for min_skip in (None, 0):  # the default seeking policy, and seeking at every chance
            for drop in (True, False):
                with VideoReader(path) as r:
                    r.drop_unneeded = drop
                    if min_skip is not None:
                        r.min_skip = min_skip
                    assert np.array_equal(r.get_frames(idx), reference[idx]), (name, list(idx), min_skip, drop)
                    decoded[drop] += r.frames_decoded
                    assert r.packets_dropped == 0 or drop
    if name == "prepared":  # no B-frames: every frame is a reference, nothing to drop
        assert decoded[True] == decoded[False]
    else:
        assert decoded[True] < 0.8 * decoded[False], decoded


def test_x264_default_has_reference_b_frames_and_drops_only_the_others(skip_videos):
    import av

    from tpn.data.nal import nonref_test

    path = skip_videos["x264"]
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        nonref = nonref_test(s.codec_context.name, s.codec_context.extradata)
        flags = [nonref(memoryview(p)) for p in c.demux(s) if p.size]
    with av.open(str(path)) as c:
        b_frames = sum(f.pict_type == av.video.frame.PictureType.B for f in c.decode(video=0))
    assert 0 < sum(flags) < b_frames  # b-pyramid: some B-frames are references


@pytest.mark.parametrize("name", ["x264", "hevc"])
def test_decoding_stops_at_the_last_needed_packet(skip_videos, name):
    """One frame of a long GOP: every packet up to its own in decode order goes to the decoder
    (minus dropped ones), none after it (the decoder is drained for B-frame reordering)."""
    path = skip_videos[name]
    reference = read_all_frames(path)
    for w in (5, 37, 62, 100):
        for drop in (True, False):
            with VideoReader(path) as r:
                r.drop_unneeded = drop
                assert np.array_equal(r.get_frames([w]), reference[[w]])
                assert r.frames_decoded + r.packets_dropped == r._decode_pos[w] + 1
                assert (r.packets_dropped > 0) == drop


# ------------------------------------------------------------------ the index cache
def test_a_reopened_video_skips_the_demux_and_gives_the_same_bytes(skip_videos, monkeypatch):
    """Across readers of one process (a loader worker's epochs) the demux pass runs once per file;
    the frames, the frames decoded and the packets dropped are those of a reader without cache."""
    from tpn.data.video import IndexCache

    demuxes = []
    demux = VideoReader._demux
    monkeypatch.setattr(VideoReader, "_demux", lambda self: demuxes.append(self.path) or demux(self))
    for name in ("x264", "x264_gop12", "hevc"):
        path = skip_videos[name]
        reference = read_all_frames(path)
        sets = _index_sets(len(reference))
        monkeypatch.setattr(VideoReader, "index_cache", None)
        plain = []
        for idx in sets:
            with VideoReader(path) as r:
                plain.append((r.get_frames(idx), r.frames_decoded, r.packets_dropped))
        assert len(demuxes) == len(sets)
        cache = IndexCache()
        monkeypatch.setattr(VideoReader, "index_cache", cache)
        demuxes.clear()
        for epoch in range(2):
            for idx, (frames, decoded, dropped) in zip(sets, plain):
                with VideoReader(path) as r:
                    got = r.get_frames(idx)
                    assert got.tobytes() == frames.tobytes() == reference[idx].tobytes(), (name, list(idx))
                    assert (r.frames_decoded, r.packets_dropped) == (decoded, dropped)
        assert demuxes == [path] and cache.misses == 1 and cache.hits == 2 * len(sets) - 1
        flags = cache.get(IndexCache.key(path)).nonref
        assert flags.count(2) > 0 and flags.count(0) < len(flags)  # non-reference flags learned, kept
        demuxes.clear()


def test_the_index_cache_is_bounded_and_forgets_the_least_recently_used(tmp_path, monkeypatch):
    import tracemalloc

    from tpn.data.video import FileIndex, IndexCache

    paths = []
    for i in range(6):
        paths.append(tmp_path / f"v{i}.mp4")
        write_mp4(paths[-1], render("up_slow", (32, 24), 30 + 10 * i, np.random.default_rng(i)))
    cache = IndexCache(max_bytes=3 * 1500)  # an entry of 30-80 frames: 1300-1800 bytes
    monkeypatch.setattr(VideoReader, "index_cache", cache)
    for p in paths[:3] + [paths[0]] + paths[3:]:  # v0 used again before v3..v5 come
        with VideoReader(p):
            assert cache.bytes <= cache.max_bytes
    kept = {k[0] for k in cache._entries}
    assert 1 <= len(kept) < 6 and str(paths[5]) in kept and str(paths[1]) not in kept
    assert cache.hits == 1 and cache.misses == 6
    # the byte count covers what the entries hold in memory (tracemalloc: their arrays, keys, records)
    big = IndexCache(max_bytes=1 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            n = 300 + i % 7
            entry = FileIndex(n, np.arange(n, dtype=np.int64) * 512, np.zeros(n, bool), bytearray(n))
            big.put((f"k400/train/some_class/{i:011d}_000010_000020.mp4", 10**6 + i, 10**8 + i, 17 * 10**17 + i,
                     17 * 10**17 + i), entry)
            del entry
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert big.bytes <= big.max_bytes and 200 < len(big) < 300
    assert held <= big.max_bytes, (held, big.bytes)


def test_a_rewritten_file_is_indexed_afresh(tmp_path, monkeypatch):
    from tpn.data.video import IndexCache

    monkeypatch.setattr(VideoReader, "index_cache", IndexCache())
    p = tmp_path / "v.mp4"
    write_mp4(p, render("up_slow", (32, 24), 30, np.random.default_rng(0)))
    with VideoReader(p) as r:
        assert r.num_frames == 30
    tmp = tmp_path / "new.mp4"
    frames = render("left_fast", (32, 24), 45, np.random.default_rng(1))
    write_mp4(tmp, frames, preset="medium")
    tmp.replace(p)  # replaced by a rename, as `tpn data prepare` and downloaders do
    with VideoReader(p) as r:
        assert r.num_frames == 45
        assert np.array_equal(r.get_frames([44, 3]), read_all_frames(p)[[44, 3]])


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_a_reader_converts_in_its_own_thread_with_the_same_pixels(skip_videos, monkeypatch):
    """PyAV's converter starts a pool of one thread per CPU for every video unless told otherwise:
    a reader converts in its own thread (a loader worker is the unit of parallelism), to the
    same bytes as a converter with threads."""
    import gc
    import os

    path, idx = skip_videos["x264"], [3, 50, 119]
    reference = read_all_frames(path)[idx]
    gc.collect()
    before = len(os.listdir("/proc/self/task"))
    with VideoReader(path) as r:
        frames = r.get_frames(idx)
        assert len(os.listdir("/proc/self/task")) <= before
    assert frames.tobytes() == reference.tobytes()
    monkeypatch.setattr(VideoReader, "convert_threads", 3)
    with VideoReader(path) as r:
        assert r.get_frames(idx).tobytes() == frames.tobytes()
        assert len(os.listdir("/proc/self/task")) > before
