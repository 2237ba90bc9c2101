"""Data-loader throughput per worker (same as `tpn bench data`), results as JSON.

    python benchmarks/bench_data.py --out benchmarks/results/data_cpu_2core.json

Generates Kinetics-like H.264 videos (340x256 and 456x256, 30 fps, 10 s, GOP 250 and 12)
under --videos-dir, then times training-clip sampling and 30-view test sampling with the
seeking and the sequential decode strategy; see tpn/data/bench.py for the protocol.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "data", *sys.argv[1:]]))
