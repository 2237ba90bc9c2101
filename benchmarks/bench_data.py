"""Data-loader throughput per worker (same as `tpn bench data`), results as JSON.

    python benchmarks/bench_data.py --out benchmarks/results/data_cpu_2core.json

Generates Kinetics-like H.264 videos (340x256 and 456x256, 30 fps, 10 s, B-frames, GOP 250)
under --videos-dir, rewrites them with `tpn data prepare`, then times one worker's training
clips (three augmentation set-ups) and 30-view test samples on both; see tpn/data/bench.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "data", *sys.argv[1:]]))
