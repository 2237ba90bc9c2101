"""`tpn data lists`: train/val lists and a label map from a folder of videos in class sub-folders.

FOLDER/CLASS_NAME/**/VIDEO: each sub-folder is a class (labels in sorted name order), its videos at
any depth; a seeded share of each class goes to validation. Lists hold `relative/path label`
(data.format list, data.root FOLDER), labels.txt one class name per line.
"""
from __future__ import annotations

import random
from pathlib import Path

from tpn.errors import TpnError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")
OUTPUTS = ("train.txt", "val.txt", "labels.txt")


def _videos(class_dir: Path, root: Path) -> list[str]:
    out = []
    for p in sorted(class_dir.rglob("*")):
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith("."):
            rel = p.relative_to(root).as_posix()
            if rel != rel.strip() or any(c in rel for c in "\r\n\t"):
                raise TpnError(f"{p}: a path with a line break, a tab or spaces at its ends cannot be a list line: "
                               "rename it")
            out.append("./" + rel if rel.startswith("#") else rel)  # a line starting with '#' is a comment
    return out


def write_lists(folder: str | Path, out: str | Path | None = None, val_fraction: float = 0.2, seed: int = 0,
                overwrite: bool = False) -> dict:
    """Write train.txt, val.txt and labels.txt into `out` (default `folder`); returns a summary."""
    root, out = Path(folder), Path(out) if out is not None else Path(folder)
    if not root.is_dir():
        raise TpnError(f"{root}: not a folder (give a folder with one sub-folder of videos per class)")
    if not 0 <= val_fraction < 1:
        raise TpnError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    existing = [out / n for n in OUTPUTS if (out / n).exists()]
    if existing and not overwrite:
        raise TpnError(f"{existing[0]}: exists; pass --overwrite to replace it, or --out another folder")
    classes = {d.name: _videos(d, root) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    empty = [name for name, v in classes.items() if not v]
    classes = {name: v for name, v in classes.items() if v}
    if len(classes) < 2:
        raise TpnError(f"{root}: found {len(classes)} class sub-folders with videos ({', '.join(VIDEO_SUFFIXES[:5])}, "
                       "...); need at least 2")
    rng = random.Random(seed)
    train, val, small = [], [], []
    for label, (name, videos) in enumerate(classes.items()):
        rng.shuffle(videos)
        n_val = max(1, round(len(videos) * val_fraction)) if val_fraction > 0 and len(videos) > 1 else 0
        if val_fraction > 0 and len(videos) < 2:
            small.append(name)
        val += [f"{v} {label}" for v in sorted(videos[:n_val])]
        train += [f"{v} {label}" for v in sorted(videos[n_val:])]
    out.mkdir(parents=True, exist_ok=True)
    for name, lines in zip(OUTPUTS, (train, val, list(classes))):
        (out / name).write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    return {"root": str(root), "out": str(out), "classes": list(classes), "train": len(train), "val": len(val),
            "empty": empty, "no_val": small}
