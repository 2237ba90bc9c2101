"""Frame sampling: exact indices, and the same indices as mmaction2 1.x's SampleFrames."""
import numpy as np
import pytest

from tpn.data import sampling


def test_train_indices_are_one_strided_clip_in_the_mmaction2_window():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(400):
        idx = sampling.train_indices(100, 8, 8, rng)
        assert np.array_equal(np.diff(idx), [8] * 7)
        starts.add(int(idx[0]))
    assert starts == set(range(0, 100 - 64 + 1))  # every start in [0, n - T*s], nothing else
    # same generator state -> same clip
    a = sampling.train_indices(300, 8, 8, np.random.default_rng(5))
    assert np.array_equal(a, sampling.train_indices(300, 8, 8, np.random.default_rng(5)))


def test_short_videos_loop():
    rng = np.random.default_rng(0)
    assert sampling.train_indices(20, 8, 8, rng).tolist() == [0, 8, 16, 4, 12, 0, 8, 16]
    assert sampling.val_indices(20, 8, 8).tolist() == [0, 8, 16, 4, 12, 0, 8, 16]
    assert sampling.test_indices(5, 4, 2, 3).tolist() == [[0, 2, 4, 1]] * 3


def test_val_and_test_indices_exact():
    assert sampling.val_indices(300, 8, 8).tolist() == list(121 + 8 * np.arange(8))  # (300 - 57) // 2
    t = sampling.test_indices(300, 8, 8, 10)
    assert t.shape == (10, 8)
    # starts run from 0 to 300 - 57 = 243 in 9 equal steps of 27
    assert t[:, 0].tolist() == [0, 27, 54, 81, 108, 135, 162, 189, 216, 243]
    assert t[-1, -1] == 299 and np.all(np.diff(t, axis=1) == 8)
    # 250 frames: starts 193 * k / 9 rounded half to even
    assert sampling.test_indices(250, 8, 8, 10)[:, 0].tolist() == [0, 21, 43, 64, 86, 107, 129, 150, 172, 193]
    assert sampling.test_indices(300, 8, 8, 1).tolist() == [sampling.val_indices(300, 8, 8).tolist()]


@pytest.mark.parametrize("n", [20, 56, 57, 63, 64, 65, 120, 251, 300, 1001])
def test_same_indices_as_mmaction2(n):
    loading = pytest.importorskip("mmaction.datasets.transforms.loading")
    for clip_len, interval, clips in ((8, 8, 10), (8, 8, 1), (4, 2, 3), (32, 2, 10)):
        ref = loading.SampleFrames(clip_len, interval, clips, test_mode=True)
        got = ref.transform(dict(total_frames=n, start_index=0))["frame_inds"].reshape(clips, clip_len)
        ours = sampling.test_indices(n, clip_len, interval, clips) if clips > 1 else \
            sampling.val_indices(n, clip_len, interval)[None]
        assert np.array_equal(ours, got), (n, clip_len, interval, clips)
    # train: mmaction2 draws with np.random.randint(n - T*s + 1); the same set of possible clips
    ref = loading.SampleFrames(8, 8, 1)
    np.random.seed(0)
    theirs = {tuple(ref.transform(dict(total_frames=n, start_index=0))["frame_inds"]) for _ in range(300)}
    rng = np.random.default_rng(0)
    ours = {tuple(sampling.train_indices(n, 8, 8, rng)) for _ in range(300)}
    if n - 64 + 1 <= 60:  # few possible starts: both samplers hit all of them
        assert ours == theirs
    else:
        assert ours | theirs <= {tuple((s + 8 * np.arange(8)) % n) for s in range(n - 63)}
