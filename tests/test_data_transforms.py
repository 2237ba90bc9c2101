"""Transforms in torch: one draw per clip, exact crops, mmaction2's resize and three-crop."""
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


def test_resize_short_side_matches_opencv_bilinear():
    cv2 = pytest.importorskip("cv2")
    clip = torch.randint(0, 256, (3, 2, 320, 428), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = T.resize_short_side(clip, 256)
    assert out.shape == (3, 2, 256, 342) and out.dtype == torch.uint8  # 428 * 0.8 = 342.4
    ref = cv2.resize(clip[:, 0].permute(1, 2, 0).numpy(), (342, 256), interpolation=cv2.INTER_LINEAR)
    diff = np.abs(out[:, 0].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 1
    assert T.short_side_size(256, 340, 256) == (256, 340) and T.short_side_size(480, 270, 128) == (228, 128)
    same = _ramp_clip(1, 256, 340)
    assert T.resize_short_side(same, 256) is same


def test_normalize_on_uint8_batches():
    x = torch.full((2, 3, 1, 1, 1), 128, dtype=torch.uint8)
    y = T.normalize(x, (128, 0, 0), (1, 2, 4))
    assert y.dtype == torch.float32 and y[0, :, 0, 0, 0].tolist() == [0, 64, 32]
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    v = T.normalize(torch.zeros(2, 30, 3, 8, 4, 4, dtype=torch.uint8), mean, std)
    assert v.shape == (2, 30, 3, 8, 4, 4) and torch.allclose(v[1, 7, 2], torch.tensor(-103.53 / 57.375))
