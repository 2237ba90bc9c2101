import os

import pytest

if os.environ.get("TPN_TEST_READER_WITHOUT_RECORD_SIZE"):  # as torch 2.11's archive reader (see tpn.checkpoint)
    import torch

    _Reader = torch._C.PyTorchFileReader

    class _ReaderWithoutRecordSize:
        def __init__(self, *args):
            self._reader = _Reader(*args)

        def __getattr__(self, name):
            if name == "get_record_size":
                raise AttributeError(name)
            return getattr(self._reader, name)

    torch._C.PyTorchFileReader = _ReaderWithoutRecordSize


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    """4 classes x 5 real mp4 videos (96x80, 40 frames) from the project's generator."""
    from tpn.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, classes=4, videos_per_class=5, size=(96, 80), frames=40, seed=1, workers=1,
                     val_fraction=0.4)
    return root


def write_broken_videos(root):
    """Add a zero-byte, a truncated, a text and a too-short .mp4 to `root` (a copy of a synth
    dataset); returns the good videos' relative paths."""
    import numpy as np

    from tpn.data.synthetic import render, write_mp4

    good = sorted((root / "videos").rglob("*.mp4"))
    (root / "zero.mp4").write_bytes(b"")
    data = good[0].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "text.mp4").write_text("this is not a video\n")
    write_mp4(root / "short.mp4", render("right_slow", (96, 80), 5, np.random.default_rng(0)))
    return [str(p.relative_to(root)) for p in good]


def write_damaged_video(src, dst, damage: str, packets=(20, 30)) -> None:
    """Copy the mp4 `src` to `dst` with some packets damaged in place (the container stays valid):
    "flipped" inverts every 5th byte of their payload past the slice header (the decoder conceals
    it), "rejected" breaks their NAL length prefix (the decoder rejects the packet)."""
    import av

    data = bytearray(open(src, "rb").read())
    with av.open(str(src)) as container:
        where = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    for i in packets:
        pos, size = where[i]
        if damage == "flipped":
            for j in range(pos + 8, pos + size, 5):
                data[j] ^= 0xFF
        else:
            data[pos:pos + 4] = (0x7FFFFFFF).to_bytes(4, "big")
    open(dst, "wb").write(bytes(data))


def write_wide_video(path) -> None:
    """One frame of 16384x16: 2 KB of H.264 whose 10-clip 8x8 test resizes 80 frames to 262144x256."""
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.options = 16384, 16, "yuv420p", {"preset": "ultrafast"}
        for packet in [*s.encode(av.VideoFrame.from_ndarray(np.full((16, 16384, 3), 128, np.uint8))), *s.encode()]:
            c.mux(packet)
