"""The synthetic tempo dataset: classes differ only in motion (tempo, direction), seeded."""
import numpy as np

from tpn.data.synthetic import DIRECTIONS, class_names, render
from tpn.data.video import read_all_frames


def _displacement(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(dx, dy) that moves frame a onto frame b, by phase correlation (the scene pans as a whole)."""
    fa, fb = (np.fft.fft2(x.astype(np.float64).mean(-1)) for x in (a, b))
    r = np.fft.ifft2(fb * np.conj(fa) / (np.abs(fb * np.conj(fa)) + 1e-9)).real
    dy, dx = np.unravel_index(np.argmax(r), r.shape)
    h, w = r.shape
    return (dx - w if dx > w // 2 else dx), (dy - h if dy > h // 2 else dy)


def test_classes_are_tempo_and_direction_pairs():
    assert class_names(4) == ["right_slow", "right_fast", "left_slow", "left_fast"]
    assert len(set(class_names(24))) == 24 and class_names(24)[2] == "right_fast"


def test_motion_encodes_the_class_and_nothing_else_does():
    speeds = {"slow": [], "fast": []}
    for seed in range(6):
        for name in ("right_slow", "right_fast", "up_slow", "up_fast"):
            f = render(name, (96, 64), 12, np.random.default_rng(seed))
            dx, dy = _displacement(f[0], f[10])
            ux, uy = DIRECTIONS[name.rsplit("_", 1)[0]]
            along = dx * ux + dy * uy
            assert abs(dx * uy - dy * ux) <= 1, (name, dx, dy)  # moves along its direction
            speeds[name.rsplit("_", 1)[1]].append(along / 10)
    # per-video speed jitter, but the tempo classes never overlap (px/frame at 64 px height)
    assert max(speeds["slow"]) < 0.7 < 1.5 < min(speeds["fast"])
    assert np.std(speeds["fast"]) > 0.05
    # the same seed renders the same appearance for every class: a single frame says nothing
    a = render("right_slow", (96, 64), 2, np.random.default_rng(3))
    b = render("left_fast", (96, 64), 2, np.random.default_rng(3))
    assert abs(float(a.mean()) - float(b.mean())) < 3 and abs(float(a.std()) - float(b.std())) < 3


def test_generated_files_decode_to_the_rendered_motion(synth_dataset):
    line = (synth_dataset / "train.txt").read_text().splitlines()[0]
    rel, label = line.split()
    name = (synth_dataset / "labels.txt").read_text().split()[int(label)]
    frames = read_all_frames(synth_dataset / rel)
    assert frames.shape == (40, 80, 96, 3)
    dx, dy = _displacement(frames[0], frames[10])
    ux, uy = DIRECTIONS[name.rsplit("_", 1)[0]]
    assert dx * ux + dy * uy > 0
