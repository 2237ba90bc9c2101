"""tpn.data.pixels: the GPU path's NV12 -> RGB and resize give the CPU path's bytes (PyAV's `rgb24`,
OpenCV's INTER_LINEAR), max difference 0. On CPU, and on CUDA too when one is present."""
import av
import cv2
import numpy as np
import pytest
import torch
from av.video.reformatter import Colorspace, VideoReformatter

from tpn.data import transforms as T
from tpn.data.nvdec import PyAVStream, _colour
from tpn.data.pixels import nv12_to_rgb24, resize_linear_u8
from tpn.data.synthetic import render
from tpn.data.video import read_video_frames

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _encode(path, frames, codec: str, bt709: bool, full_range: bool) -> None:
    """libx264 / libx265 4:2:0, the frames and the stream tagged BT.709 or BT.601 (SMPTE 170M) and
    full (JPEG) or limited range, as the files PyAV's `rgb24` reads those tags from."""
    space = Colorspace.ITU709 if bt709 else Colorspace.ITU601
    rng = 2 if full_range else 1
    with av.open(str(path), "w") as c:
        s = c.add_stream({"h264": "libx264", "hevc": "libx265"}[codec], rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.colorspace, s.codec_context.color_range = space, rng
        if codec == "hevc":
            s.options = {"x265-params": "log-level=error"}
        for f in frames:
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(
                format="yuv420p", dst_colorspace=space, dst_color_range=rng)
            vf.colorspace, vf.color_range = space, rng
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _frames(size, n, seed):
    """The generator's moving objects, with strong noise on half the frames: every plane value occurs,
    saturated colours included (conversions that clamp)."""
    rng = np.random.default_rng(seed)
    frames = render("right_slow", size, n, rng).astype(np.int16)
    frames[::2] += rng.integers(-120, 121, frames[::2].shape, dtype=np.int16)
    return frames.clip(0, 255).astype(np.uint8)


def _planes(path):
    """Every frame's NV12 planes as `PyAVStream` (the GPU decoder's stand-in) gives them, and its tags."""
    with av.open(str(path)) as c:
        out = [(PyAVStream._nv12(f), _colour(f)) for f in c.decode(video=0)]
    nv12 = torch.stack([p for p, _ in out])
    return nv12, {t for _, t in out}


@pytest.mark.parametrize("codec", ["h264", "hevc"])
@pytest.mark.parametrize("bt709,full_range", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("size", [(342, 258), (98, 62)])
def test_nv12_to_rgb24_is_pyav_rgb24_on_encoded_files(tmp_path, codec, bt709, full_range, size):
    """x264 and x265 files, BT.601/BT.709, limited/full range, sizes whose chroma planes are odd
    (171x129, 49x31): the RGB equals what the CPU reader (`read_video_frames`, PyAV's rgb24) gives."""
    if codec == "hevc" and "libx265" not in av.codecs_available:
        pytest.skip("this FFmpeg has no libx265")
    path = tmp_path / f"{codec}.mp4"
    _encode(path, _frames(size, 6, 0), codec, bt709, full_range)
    nv12, tags = _planes(path)
    assert tags == {(bt709, full_range)}  # the decoded frames carry the tags under test
    ref = torch.from_numpy(read_video_frames(path, np.arange(len(nv12))))
    w, h = size
    for device in DEVICES:
        x = nv12.to(device)
        rgb = nv12_to_rgb24(x[:, :h], x[:, h:].unflatten(-1, (w // 2, 2)), bt709, full_range)
        assert rgb.shape == ref.shape and torch.equal(rgb.cpu(), ref), device


def _pyav_rgb24(y, u, v, bt709, full_range):
    f = av.VideoFrame(y.shape[1], y.shape[0], "yuv420p")
    for plane, a in zip(f.planes, (y, u, v)):
        np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, :a.shape[1]] = a
    f.colorspace, f.color_range = (1 if bt709 else 2), (2 if full_range else 1)
    return VideoReformatter().reformat(f, format="rgb24").to_ndarray()


@pytest.mark.parametrize("bt709,full_range", [(False, False), (True, False), (False, True), (True, True)])
def test_nv12_to_rgb24_on_every_yuv_triple(bt709, full_range):
    """All 2^24 (Y, U, V) triples in one 4096x4096 picture (each chroma sample's 2x2 block holds 4
    luma values), and an odd width: PyAV's rgb24 byte for byte."""
    pair = np.arange(2048 * 2048).reshape(2048, 2048)
    u, v = (pair % 65536 // 256).astype(np.uint8), (pair % 256).astype(np.uint8)
    y = np.empty((4096, 4096), np.uint8)
    for dy in range(2):
        for dx in range(2):
            y[dy::2, dx::2] = (pair // 65536 * 4 + 2 * dy + dx) % 256
    ref = _pyav_rgb24(y, u, v, bt709, full_range)
    got = nv12_to_rgb24(torch.from_numpy(y), torch.from_numpy(np.stack([u, v], -1)), bt709, full_range)
    assert torch.equal(got, torch.from_numpy(ref))
    y, u, v = y[:62, :97], u[:31, :49], v[:31, :49]
    got = nv12_to_rgb24(torch.from_numpy(y), torch.from_numpy(np.stack([u, v], -1)), bt709, full_range)
    assert torch.equal(got, torch.from_numpy(_pyav_rgb24(y, u, v, bt709, full_range)))


def test_nv12_to_rgb24_refuses_planes_of_different_pictures():
    with pytest.raises(ValueError, match="4:2:0"):
        nv12_to_rgb24(torch.zeros(4, 6, dtype=torch.uint8), torch.zeros(2, 2, 2, dtype=torch.uint8))


def _cv2(frames, size):
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_LINEAR).reshape(*size, -1)
                     for f in frames])


RESIZES = [((256, 340), (224, 224)), ((258, 342), (256, 339)), ((240, 320), (256, 341)), ((144, 160), (64, 64)),
           ((128, 160), (256, 320)), ((256, 340), (128, 170)), ((300, 300), (100, 100)), ((257, 341), (64, 85)),
           ((1080, 1920), (256, 455)), ((61, 97), (224, 224)), ((37, 53), (11, 7)), ((5, 3), (224, 224)),
           ((1, 9), (4, 4)), ((9, 1), (3, 5)), ((112, 326), (201, 1)), ((96, 80), (48, 40))]


@pytest.mark.parametrize("src,dst", RESIZES)
@pytest.mark.parametrize("device", DEVICES)
def test_resize_linear_u8_is_cv2_inter_linear(src, dst, device):
    """The pipeline's sizes (short side to 256, boxes to 224) and others: up, down, exactly 2x both
    ways, 4x and more down, 1-pixel sides; 3-channel frames in a batch and 1-channel images."""
    rng = np.random.default_rng(sum(src) * 1000 + sum(dst))
    frames = rng.integers(0, 256, (3, *src, 3), dtype=np.uint8)
    got = resize_linear_u8(torch.from_numpy(frames).to(device), dst)
    assert torch.equal(got.cpu(), torch.from_numpy(_cv2(frames, dst)))
    gray = frames[..., :1]
    got = resize_linear_u8(torch.from_numpy(gray).to(device), dst)
    assert torch.equal(got.cpu(), torch.from_numpy(_cv2(gray, dst)))


def test_resize_linear_u8_on_random_sizes_crops_and_boxes():
    """Random source and target sizes, the source a crop (a strided view, as the pipeline passes
    it), and random windows of the result (`box`): cv2's bytes, then cropped."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        src = (int(rng.integers(1, 300)), int(rng.integers(1, 300)))
        dst = (int(rng.integers(1, 260)), int(rng.integers(1, 260)))
        big = rng.integers(0, 256, (2, src[0] + 3, src[1] + 5, 3), dtype=np.uint8)
        frames = torch.from_numpy(big)[:, 1:1 + src[0], 2:2 + src[1]]
        ref = _cv2(frames.numpy(), dst)
        if dst != src:
            assert torch.equal(resize_linear_u8(frames, dst), torch.from_numpy(ref)), (src, dst)
        top, left = int(rng.integers(0, dst[0])), int(rng.integers(0, dst[1]))
        box = (top, left, int(rng.integers(1, dst[0] - top + 1)), int(rng.integers(1, dst[1] - left + 1)))
        window = ref[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]] if dst != src else \
            frames.numpy()[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
        assert torch.equal(resize_linear_u8(frames, dst, box), torch.from_numpy(np.ascontiguousarray(window)))
    with pytest.raises(ValueError, match="box"):
        resize_linear_u8(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), (4, 4), (2, 2, 3, 3))


def test_resize_linear_u8_matches_cv2_without_its_optimised_code():
    """OpenCV's optimised code off (SIMD dispatch beyond its baseline, IPP): the same bytes, so a
    machine with other CPU features resizes as this one does."""
    rng = np.random.default_rng(11)
    cases = [(src, dst) for src, dst in RESIZES if max(src) < 1000]
    try:
        cv2.setUseOptimized(False)
        for src, dst in cases:
            frames = rng.integers(0, 256, (2, *src, 3), dtype=np.uint8)
            assert torch.equal(resize_linear_u8(torch.from_numpy(frames), dst), torch.from_numpy(_cv2(frames, dst)))
    finally:
        cv2.setUseOptimized(True)


@pytest.mark.parametrize("mode", ["random_resized", "random"])
def test_training_geometry_equals_the_cpu_transforms(mode):
    """A training clip's resize -> crop -> resize to 224 (`transforms.draw_train_geometry`, as the
    GPU job carries it) equals `transforms.apply_geometry` on the CPU for many draws."""
    rng = np.random.default_rng(3)
    for h, w in [(256, 340), (240, 320), (144, 160), (480, 640)]:
        clip = torch.from_numpy(rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8))  # (T, H, W, 3)
        for _ in range(4):
            (rh, rw), box = T.draw_train_geometry(h, w, mode, 224, 256, rng)
            cpu = T.apply_geometry(T.to_clip(clip.numpy()), ((rh, rw), box), 224)  # (3, T, 224, 224)
            gpu = resize_linear_u8(resize_linear_u8(clip, (rh, rw), box), (224, 224))
            assert torch.equal(gpu.permute(3, 0, 1, 2), cpu), ((h, w), (rh, rw), box)
