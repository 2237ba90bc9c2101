"""`tpn data check`: scan an annotation list in parallel and report what cannot be trained on."""
from __future__ import annotations

import json
from pathlib import Path

from tpn.data.datasets import AnnotationError, iter_annotations, read_label_names
from tpn.data.pool import map_in_processes
from tpn.data.sampling import span
from tpn.data.video import VideoError, VideoReader, count_rawframes, read_rawframes


def check_video(job: tuple[str, bool, int]) -> tuple[str, str]:
    """(status, detail): ok | missing | zero-byte | unreadable | too-short."""
    path, rawframes, need = job
    p = Path(path)
    if not p.exists():
        return "missing", "file not found"
    if p.is_file() and p.stat().st_size == 0:
        return "zero-byte", "empty file"
    try:
        if rawframes:
            n = count_rawframes(p)
            if n:
                read_rawframes(p, [0, n - 1])
        else:
            with VideoReader(p) as reader:  # counts the packets: catches files cut short
                n = reader.num_frames
                if n:
                    reader.get_frames([0, n // 2, n - 1])  # decodes through to the last frame
    except VideoError as e:
        return "unreadable", str(e).split(": ", 1)[-1]
    if n < need:
        return "too-short", f"{n} frames < one clip ({need})"
    return "ok", f"{n} frames"


def check_list(list_file, root: str = "", fmt: str = "list", label_map: str = "", workers: int = 4,
               clip_len: int = 8, frame_interval: int = 8, progress: bool = True) -> dict:
    names = read_label_names(label_map) if label_map else None
    list_file = Path(list_file)
    lines, bad_lines = [], []
    for n, line, entry in iter_annotations(list_file, fmt, names):
        if isinstance(entry, AnnotationError):
            bad_lines.append({"line": n, "text": line.strip(), "error": str(entry)})
        else:
            lines.append((n, line, entry))
    need = span(clip_len, frame_interval)
    jobs = [(str(Path(root) / rel), fmt == "mmaction_rawframes", need) for _, _, (rel, _, _) in lines]
    results = map_in_processes(check_video, jobs, workers, chunksize=4, desc="checking" if progress else None)
    problems = [
        {"line": n, "path": job[0], "status": status, "detail": detail}
        for (n, _, _), job, (status, detail) in zip(lines, jobs, results) if status != "ok"
    ]
    counts: dict[str, int] = {}
    for status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    clean = [line for (_, line, _), (status, _) in zip(lines, results) if status == "ok"]
    if fmt == "kinetics_csv":  # keep the header
        clean.insert(0, list_file.read_text().splitlines()[0])
    return {"list": str(list_file), "root": root, "total": len(lines) + len(bad_lines), "counts": counts,
            "bad_lines": bad_lines, "problems": problems, "clean_lines": clean}


def summary(report: dict, limit: int = 10) -> str:
    c = report["counts"]
    out = [f"{report['list']}: {report['total']} lines, {c.get('ok', 0)} readable, "
           f"{len(report['problems'])} unusable videos, {len(report['bad_lines'])} bad lines"]
    for status in ("missing", "zero-byte", "unreadable", "too-short"):
        if c.get(status):
            out.append(f"  {status:<11}{c[status]}")
    for p in report["problems"][:limit]:
        out.append(f"  line {p['line']}: {p['status']}: {p['path']} ({p['detail']})")
    for b in report["bad_lines"][:limit]:
        out.append(f"  bad line {b['line']}: {b['error']}")
    more = len(report["problems"]) + len(report["bad_lines"]) - 2 * limit
    if more > 0:
        out.append("  ... see the JSON report for the rest")
    return "\n".join(out)


def write_outputs(report: dict, json_path: str | Path | None, clean_path: str | Path | None) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps({k: v for k, v in report.items() if k != "clean_lines"}, indent=1))
    if clean_path:
        Path(clean_path).write_text("\n".join(report["clean_lines"]) + ("\n" if report["clean_lines"] else ""))
