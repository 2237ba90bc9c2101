"""The synthetic tempo dataset: classes differ only in motion (tempo, direction), seeded."""
import numpy as np
import pytest

from tpn.data.synthetic import DIRECTIONS, class_names, render, tempo_speeds
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


def test_defaults_render_the_original_dataset():
    """The harder options leave the default videos as they were (hash of the original generator's
    output for this seed, on this project's numpy)."""
    import hashlib

    f = render("up_left_medium", (96, 64), 6, np.random.default_rng(7))
    assert hashlib.sha256(f.tobytes()).hexdigest()[:16] == "c5b228fc06c636ab"
    assert tempo_speeds() == {"slow": 1.0, "medium": 2.2, "fast": 4.84}


def test_harder_tempos_are_closer_but_never_overlap():
    assert tempo_speeds(1.5) == {"slow": 1.0, "medium": 1.5, "fast": 2.25}
    with pytest.raises(ValueError, match="must be above 1.35"):
        tempo_speeds(1.3)
    speeds = {"slow": [], "medium": [], "fast": []}
    for seed in range(6):
        for tempo in speeds:
            f = render(f"down_{tempo}", (96, 64), 12, np.random.default_rng(seed), tempo_ratio=1.5)
            dx, dy = _displacement(f[0], f[10])
            assert dx == 0, (tempo, dx, dy)
            speeds[tempo].append(dy / 10)
    # px/frame at 64 px height: 0.5, 0.75, 1.125 before the +-15% jitter
    assert max(speeds["slow"]) < min(speeds["medium"]) and max(speeds["medium"]) < min(speeds["fast"])
    assert 1.3 < np.mean(speeds["medium"]) / np.mean(speeds["slow"]) < 1.7


def test_distractors_move_on_their_own_over_the_same_video():
    rng = lambda: np.random.default_rng(4)  # noqa: E731
    plain = render("right_slow", (96, 64), 12, rng(), tempo_ratio=1.5)
    busy = render("right_slow", (96, 64), 12, rng(), tempo_ratio=1.5, distractors=3)
    changed = (plain != busy).any(-1)  # only the distractors' pixels differ: same draws otherwise
    assert all(0.01 < changed[t].mean() < 0.3 for t in range(12))
    centroid = [np.argwhere(changed[t]).mean(0) for t in (0, 1)]
    assert not np.allclose(centroid[0], centroid[1])  # they move
    dx, dy = _displacement(busy[0], busy[10])  # the scene still pans with the class
    assert dx > 0 and abs(dy) <= 1


def test_synth_cli_hard_options_and_errors(tmp_path):
    import json
    import subprocess
    import sys

    def tpn(*args):
        return subprocess.run([sys.executable, "-m", "tpn.cli", "data", "synth", str(tmp_path / "d"), *args],
                              capture_output=True, text=True)

    r = tpn("--tempo-ratio", "1.2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--tempo-ratio 1.2: must be above 1.353" in r.stderr
    r = tpn("--classes", "3", "--videos-per-class", "2", "--size", "64x48", "--frames", "16", "--workers", "1",
            "--tempo-ratio", "1.5", "--distractors", "2")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "d" / "synth.json").read_text())
    assert info["tempo_speeds"]["fast"] == 2.25 and info["distractors"] == 2 and info["frames"] == 16
    assert len(list((tmp_path / "d" / "videos").rglob("*.mp4"))) == 6


@pytest.mark.parametrize("frames", ["0", "-3", "1"])
def test_synth_refuses_videos_without_motion(tmp_path, capsys, frames):
    from tpn.cli import main

    # --frames 0 used to print 'wrote 400 train + 100 val videos' over lists of files never written
    assert main(["data", "synth", str(tmp_path / "d"), "--frames", frames]) == 2
    assert f"--frames {frames}: need at least 2 (motion is a change between frames)" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_synth_into_a_file_is_one_line(tmp_path, capsys):
    from tpn.cli import main

    (tmp_path / "train.txt").write_text("a.mp4 0\n")
    assert main(["data", "synth", str(tmp_path / "train.txt")]) == 2
    assert f"{tmp_path / 'train.txt'}: exists and is not a folder" in capsys.readouterr().err
