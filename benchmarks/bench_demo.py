"""`tpn demo` measured: accuracy and time of each demo model, written to a results file.

Runs the full demo (`tpn.engine.demo.run_demo`, as `tpn demo` does) for each --models entry in a
fresh folder, and records per model: the best validation top-1 (the one that picked `best.pth`),
the held-out test top-1 and top-5, the wall time of the whole demo (writing the videos included)
and the CPU time of the process and its loader workers, beside the machine (CPU model, usable
cores, 1-minute load before and after: other jobs on the cores lengthen the time, not the scores
of a machine) and the commit. The README's "The demo" section quotes this file.

    python benchmarks/bench_demo.py --out benchmarks/results/demo_cpu_2core_DATE.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tpn.bench import machine_info  # noqa: E402
from tpn.engine.demo import run_demo  # noqa: E402


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(model: str, device: str, quick: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"demo_{model}_") as out:
        load0, c0, t0 = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
        r = run_demo(out, quick=quick, device=device, model=model)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    m = r["test"]["metrics"]
    return dict(model=model, quick=quick, epochs=len(r["train"]["epochs"]),
                best_val_top1=r["train"]["best_val_top1"], test_top1=m["top1"], test_top5=m["top5"],
                test_videos=m["videos"], wall_s=round(wall, 1), cpu_s=round(cpu, 1),
                load_avg_1min_before=load0, load_avg_1min_after=os.getloadavg()[0])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tpn,tsm", help="demo models (tpn, tsm), comma-separated")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="the smoke demo (a check of the script, not a result)")
    ap.add_argument("--out", required=True, help="results file (JSON)")
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or None
    res = dict(command="python benchmarks/bench_demo.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               commit=commit, machine=machine_info(), runs=[])
    for model in args.models.split(","):
        res["runs"].append(measure(model, args.device, args.quick))
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")  # rewritten after each model
        print(json.dumps(res["runs"][-1]), flush=True)


if __name__ == "__main__":
    main()
