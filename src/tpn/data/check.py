"""`tpn data check`: scan an annotation list in parallel and report what cannot be trained on.

The clip geometry and the list's layout come from a `DataConfig` (a config's `data` section),
so the check applies the rules training applies. Every frame of every video is decoded once,
counting decoder errors; see docs/data.md ("Checking a dataset") for the statuses and the
training policy for damaged videos.
"""
from __future__ import annotations

import json
from pathlib import Path

from tpn.config import DataConfig
from tpn.data.datasets import AnnotationError, frames_needed, iter_annotations, read_label_names
from tpn.data.pool import map_in_processes
from tpn.data.video import VideoError, VideoReader, check_frame_size, count_rawframes, read_rawframes
from tpn.errors import read_text, write_text_atomic

STATUSES = ("missing", "zero-byte", "unreadable", "damaged", "too-short")


def decode_errors(path: str | Path) -> tuple[int, int, int]:
    """Decode every packet once: (frames decoded, packets the decoder rejected, frames in which
    it concealed damage). A rejected packet raises where a clip's decode passes through it; a
    concealed frame (FFmpeg flags it corrupt) decodes, with blocks guessed from its neighbours."""
    import av

    decoded = rejected = concealed = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for packet in container.demux(stream):  # ends with an empty packet that drains the decoder
            try:
                for frame in stream.codec_context.decode(packet):
                    decoded += 1
                    concealed += bool(frame.is_corrupt)
            except av.error.FFmpegError:
                rejected += 1
    return decoded, rejected, concealed


def _check_file(path: Path, rawframes: bool, template: str, total: int,
                size: tuple[int, int | None]) -> tuple[int, str]:
    """(frames, "" or the decoder errors of a damaged video); raises VideoError. `size`:
    (data.max_frame_pixels, data.short_side), checked on the header before any decoding, as
    training and testing check it."""
    if rawframes:  # the frame count as training takes it: the list's, else the folder's
        n = total if total > 0 else count_rawframes(path, template)
        if n < 1:
            raise VideoError(f"{path}: no frames named {template.format(1)}, ...")
        frames = read_rawframes(path, [0, n - 1], template)
        check_frame_size(path, frames.shape[2], frames.shape[1], *size)
        return n, ""
    with VideoReader(path) as reader:  # counts the packets: catches files cut short
        cc = reader.stream.codec_context
        check_frame_size(path, cc.width, cc.height, *size)
        n = reader.num_frames
    try:
        decoded, rejected, concealed = decode_errors(path)
    except Exception as e:  # av's many error classes, or no stream to decode
        raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    if n and not decoded:
        raise VideoError(f"{path}: no frame decodes")
    if rejected or concealed or decoded < n:
        return n, (f"decoder errors: {rejected} packets rejected, {concealed} frames concealed, "
                   f"{decoded} of {n} frames decoded")
    with VideoReader(path) as reader:  # the seeking reader training uses, on its own index
        reader.get_frames([0, n // 2, n - 1])
    return n, ""


def check_video(job: tuple) -> tuple[str, str]:
    """(status, detail): ok or one of STATUSES. `job`: (path, rawframes, template, frames in the
    list, frames needed, (data.max_frame_pixels, data.short_side))."""
    path, rawframes, template, total, need, size = job
    p = Path(path)
    if not p.exists():
        return "missing", "file not found"
    if p.is_file() and p.stat().st_size == 0:
        return "zero-byte", "empty file"
    try:
        n, damage = _check_file(p, rawframes, template, total, size)
    except VideoError as e:
        return "unreadable", str(e).split(": ", 1)[-1]
    if damage:
        return "damaged", damage
    if n < need:
        return "too-short", f"{n} frames < one clip ({need})"
    return "ok", f"{n} frames"


def check_list(list_file, data: DataConfig, split: str = "train", workers: int = 4, progress: bool = True) -> dict:
    """Check every line of `list_file`, read as `data` reads the `split` list (root, format,
    label map, clip geometry)."""
    names = read_label_names(data.label_map) if data.label_map else None
    list_file = Path(list_file)
    lines, bad_lines = [], []
    for n, line, entry in iter_annotations(list_file, data.format, names):
        if isinstance(entry, AnnotationError):
            bad_lines.append({"line": n, "text": line.strip(), "error": str(entry)})
        else:
            lines.append((n, line, entry))
    need = frames_needed(data, split)
    size = (data.max_frame_pixels, data.short_side)
    jobs = [(str(Path(data.root) / rel), data.format == "mmaction_rawframes", data.filename_tmpl, total, need, size)
            for _, _, (rel, _, total) in lines]
    results = map_in_processes(check_video, jobs, workers, chunksize=4, desc="checking" if progress else None)
    problems = [
        {"line": n, "path": job[0], "status": status, "detail": detail}
        for (n, _, _), job, (status, detail) in zip(lines, jobs, results) if status != "ok"
    ]
    counts: dict[str, int] = {}
    for status, _ in results:
        counts[status] = counts.get(status, 0) + 1
    clean = [line for (_, line, _), (status, _) in zip(lines, results) if status == "ok"]
    if data.format == "kinetics_csv":  # keep the header
        clean.insert(0, read_text(list_file).splitlines()[0])
    return {"list": str(list_file), "root": data.root, "split": split, "frames_needed": need,
            "total": len(lines) + len(bad_lines), "counts": counts,
            "bad_lines": bad_lines, "problems": problems, "clean_lines": clean}


def summary(report: dict, limit: int = 10) -> str:
    c = report["counts"]
    out = [f"{report['list']}: {report['total']} lines, {c.get('ok', 0)} readable, "
           f"{len(report['problems'])} unusable videos, {len(report['bad_lines'])} bad lines "
           f"(as a {report['split']} list: at least {report['frames_needed']} frames a video)"]
    for status in STATUSES:
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
        write_text_atomic(json_path, json.dumps({k: v for k, v in report.items() if k != "clean_lines"}, indent=1))
    if clean_path:
        write_text_atomic(clean_path, "\n".join(report["clean_lines"]) + ("\n" if report["clean_lines"] else ""))
