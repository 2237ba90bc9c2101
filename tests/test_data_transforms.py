"""Transforms: one draw per clip, exact crops, mmaction2's (OpenCV's) resize bit for bit, three-crop."""
import numpy as np
import pytest
import torch

from tpn.data import transforms as T


def _ramp_clip(t=4, h=40, w=60):
    base = torch.arange(h * w, dtype=torch.int64).view(h, w) % 251
    clip = base.expand(3, t, h, w).to(torch.uint8).clone()
    clip[:, :, 0, 0] = torch.arange(t, dtype=torch.uint8)  # frames differ
    return clip


def _same_op_on_every_frame(src, out, op):
    return all(torch.equal(op(src[:, i:i + 1]), out[:, i:i + 1]) for i in range(src.shape[1]))


def test_random_ops_draw_once_per_clip():
    clip = _ramp_clip()
    out = T.random_crop(clip, 32, np.random.default_rng(0))
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.uint8
    assert _same_op_on_every_frame(clip, out, lambda c: T.random_crop(c, 32, np.random.default_rng(0)))
    out = T.random_resized_crop(clip, 24, np.random.default_rng(3))
    assert out.shape == (3, 4, 24, 24) and out.dtype == torch.uint8
    assert _same_op_on_every_frame(clip, out, lambda c: T.random_resized_crop(c, 24, np.random.default_rng(3)))
    jit = T.color_jitter(clip, np.random.default_rng(0))
    assert jit.dtype == torch.uint8 and not torch.equal(jit, clip)
    assert _same_op_on_every_frame(clip, jit, lambda c: T.color_jitter(c, np.random.default_rng(0)))


def test_random_resized_crop_box_area_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = T.random_resized_crop_box(256, 340, rng)
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 340
        if (h, w) != (256, 256):  # not the fallback centre crop
            assert 0.08 * 0.9 <= h * w / (256 * 340) <= 1.0
            assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_center_and_three_crop_cover_the_long_side():
    clip = _ramp_clip(2, 40, 61)
    crops = T.three_crop(clip, 40)
    assert [tuple(c.shape) for c in crops] == [(3, 2, 40, 40)] * 3
    assert torch.equal(crops[0], clip[..., :40]) and torch.equal(crops[1], clip[..., 10:50])
    assert torch.equal(crops[2], clip[..., 20:60])
    tall = _ramp_clip(2, 70, 40)
    assert [c[0, 0, 0, 0].item() for c in T.three_crop(tall, 40)] == [tall[0, 0, r, 0].item() for r in (0, 15, 30)]
    assert torch.equal(T.center_crop(clip, 20), clip[..., 10:30, 20:40])


def test_three_crop_and_center_crop_match_mmaction2():
    proc = pytest.importorskip("mmaction.datasets.transforms.processing")
    clip = _ramp_clip(3, 256, 340)
    imgs = [clip[:, t].permute(1, 2, 0).numpy() for t in range(3)]
    ref = proc.ThreeCrop(256).transform(dict(imgs=list(imgs), img_shape=(256, 340)))["imgs"]
    left, right, centre = (np.stack(ref[k * 3:(k + 1) * 3]) for k in range(3))  # mmaction2's order
    ours = [c.permute(1, 2, 3, 0).numpy() for c in T.three_crop(clip, 256)]
    assert np.array_equal(ours[0], left) and np.array_equal(ours[1], centre) and np.array_equal(ours[2], right)
    ref = proc.CenterCrop(224).transform(dict(imgs=list(imgs), img_shape=(256, 340)))["imgs"]
    assert np.array_equal(T.center_crop(clip, 224).permute(1, 2, 3, 0).numpy(), np.stack(ref))


def _noise_and_smooth(h, w, t=2, seed=0):
    """Two test clips (3, t, h, w) uint8, laid out frames-last as decoded: noise and a smooth wave."""
    noise = np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    wave = np.stack([127.5 + 127.5 * np.sin(xx / 17.0 + yy / 23.0 + c + f) for f in range(t) for c in range(3)], -1)
    smooth = wave.reshape(h, w, t, 3).transpose(2, 0, 1, 3).round().astype(np.uint8)
    return [T.to_clip(noise), T.to_clip(smooth)]


def _opencv_linear_u8(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV's uint8 INTER_LINEAR (imgproc/src/resize.cpp) written out, to pin down the arithmetic
    the released checkpoints were scored with: source coordinate (d + 0.5) * scale - 0.5 in
    float32, weights rounded to 11 bits (half to even); x clamped at the borders with weight 0,
    y rows clamped with their weights kept; horizontal sums in int32, then the vertical
    ((b0 * (r0 >> 4)) >> 16) + ((b1 * (r1 >> 4)) >> 16) + 2 >> 2."""
    from benchmarks.bench_resize import opencv_taps

    x0, x1, a0, a1 = opencv_taps(img.shape[1], w, True)
    y0, y1, b0, b1 = opencv_taps(img.shape[0], h, False)
    s = img.astype(np.int64)
    rows = (s[:, x0] * a0[:, None] + s[:, x1] * a1[:, None]) >> 4
    out = ((b0[:, None, None] * rows[y0]) >> 16) + ((b1[:, None, None] * rows[y1]) >> 16)
    return ((out + 2) >> 2).astype(np.uint8)


RESIZES = [  # (h, w) -> (h, w): up, down, one axis, odd sizes, the short-side and crop cases
    ((128, 160), (256, 320)), ((1080, 1920), (256, 455)), ((720, 1280), (256, 455)), ((360, 480), (256, 341)),
    ((320, 428), (256, 342)), ((180, 240), (224, 224)), ((256, 341), (256, 340)), ((101, 77), (223, 37)),
    ((512, 680), (256, 340)),  # exactly half: OpenCV switches to its area path, the same numbers
]


@pytest.mark.parametrize("src,dst", RESIZES)
def test_resize_is_opencv_inter_linear_bit_for_bit(src, dst):
    cv2 = pytest.importorskip("cv2")
    for clip in _noise_and_smooth(*src):
        out = T.resize(clip, dst)
        assert out.shape == (3, 2, *dst) and out.dtype == torch.uint8
        for t in range(2):
            frame = clip[:, t].permute(1, 2, 0).numpy()
            got = out[:, t].permute(1, 2, 0).numpy()
            assert np.array_equal(got, cv2.resize(frame, dst[::-1], interpolation=cv2.INTER_LINEAR))
            assert np.array_equal(got, _opencv_linear_u8(frame, *dst))
    channels_first = clip.contiguous()  # not frames-last in memory: the same values
    assert torch.equal(T.resize(channels_first, dst), out)


def test_resize_short_side_and_resized_crop_equal_mmaction2():
    """mmaction2's own transforms (Resize to short side 256; RandomResizedCrop's box then Resize
    to 224x224) on the same frames give the same bytes."""
    proc = pytest.importorskip("mmaction.datasets.transforms.processing")
    for clip in _noise_and_smooth(360, 480) + _noise_and_smooth(1080, 1920, t=1) + _noise_and_smooth(130, 170):
        imgs = [clip[:, t].permute(1, 2, 0).numpy() for t in range(clip.shape[1])]
        ref = proc.Resize(scale=(-1, 256)).transform(dict(imgs=list(imgs), img_shape=imgs[0].shape[:2]))
        ours = T.resize_short_side(clip, 256)
        assert ref["img_shape"] == tuple(ours.shape[-2:])
        assert np.array_equal(ours.permute(1, 2, 3, 0).numpy(), np.stack(ref["imgs"]))
        top, left, ch, cw = T.random_resized_crop_box(*clip.shape[-2:], np.random.default_rng(5))
        crop = [im[top:top + ch, left:left + cw] for im in imgs]
        ref = proc.Resize(scale=(224, 224), keep_ratio=False).transform(dict(imgs=crop, img_shape=(ch, cw)))
        ours = T.random_resized_crop(clip, 224, np.random.default_rng(5))
        assert np.array_equal(ours.permute(1, 2, 3, 0).numpy(), np.stack(ref["imgs"]))


def test_short_side_size_and_no_op():
    assert T.short_side_size(256, 340, 256) == (256, 340) and T.short_side_size(480, 270, 128) == (228, 128)
    assert T.short_side_size(320, 428, 256) == (256, 342)  # 428 * 0.8 = 342.4
    same = _ramp_clip(1, 256, 340)
    assert T.resize_short_side(same, 256) is same


def test_normalize_on_uint8_batches():
    x = torch.full((2, 3, 1, 1, 1), 128, dtype=torch.uint8)
    y = T.normalize(x, (128, 0, 0), (1, 2, 4))
    assert y.dtype == torch.float32 and y[0, :, 0, 0, 0].tolist() == [0, 64, 32]
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    v = T.normalize(torch.zeros(2, 30, 3, 8, 4, 4, dtype=torch.uint8), mean, std)
    assert v.shape == (2, 30, 3, 8, 4, 4) and torch.allclose(v[1, 7, 2], torch.tensor(-103.53 / 57.375))
