"""`tpn data prepare`: rewrite a video dataset into a form that decodes fast for training.

Random-start training clips need decoding from the keyframe before the clip's first frame;
with x264's default keyframe interval (250 frames, most of a Kinetics video) every clip
decodes from near the start. The rewrite uses H.264 with
  - a short keyframe interval (`gop`, default 2), so the seeking reader starts next to each frame;
  - no B-frames, so a seek costs no reordering delay (the reader then seeks even for short skips);
  - x264's `fastdecode` tuning (CAVLC instead of CABAC, no deblocking filter): cheaper per frame;
  - the short side at the training size (256).
The measured gain in clips per CPU second and file size: docs/benchmarks.md, "Benchmarks", and
docs/data.md, "Data-loading benchmark".
Audio is dropped; frame count and rate are kept, so annotations stay valid. Videos that
cannot be read are skipped and listed; the rewritten list holds only the written videos.
A run stopped half-way resumes: each video is written under a temporary name and renamed when
complete, and a video whose rewrite already exists with the same settings (its header's tag) is
kept, not encoded again.
"""
from __future__ import annotations

import json
from pathlib import Path

from tpn.data.datasets import AnnotationError, parse_line, read_label_names
from tpn.data.pool import map_in_processes
from tpn.data.video import PREPARED_TAG, display_matrix
from tpn.errors import TpnError, read_text, write_text_atomic

DEFAULT_GOP = 2  # keyframe interval of the rewrite: fastest training reads; 8 halves the disk space
PRESET = "veryfast"  # x264's speed preset of the rewrite


def reencode(src: str | Path, dst: str | Path, short_side: int = 256, gop: int = DEFAULT_GOP, crf: int = 23,
             preset: str = PRESET) -> int:
    """Re-encode one video (H.264 yuv420p, keyframe every `gop` frames, no B-frames, fastdecode);
    returns frames written."""
    from fractions import Fraction

    import av
    from av.video.reformatter import VideoReformatter

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    n = 0
    with av.open(str(src)) as inp:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        h, w = vin.codec_context.height, vin.codec_context.width
        if h <= w:
            oh, ow = short_side, int(round(w * short_side / h / 2)) * 2
        else:
            oh, ow = int(round(h * short_side / w / 2)) * 2, short_side
        with av.open(str(tmp), mode="w", format="mp4") as out:
            rate = vin.average_rate or 30
            x264 = "libx264" in av.codecs_available
            if x264:  # no B-frames, fixed GOP: the reader indexes it from the header (tpn.data.video)
                out.metadata["comment"] = tag(short_side, gop, crf, preset)
            vout = out.add_stream("libx264" if x264 else "mpeg4", rate=rate)
            vout.width, vout.height, vout.pix_fmt = ow, oh, "yuv420p"
            vout.codec_context.gop_size = gop
            vout.codec_context.max_b_frames = 0
            vout.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "crf": str(crf),
                            "preset": preset, "tune": "fastdecode", "bf": "0"} if x264 else {}
            step, scale = Fraction(1) / Fraction(rate), VideoReformatter()
            for frame in inp.decode(vin):
                m = display_matrix(frame) if n == 0 else None
                if m:  # a phone video's display matrix (turn, mirror): the copy shows the same
                    vout.set_display_matrix((m[0], m[1], 0, m[3], m[4], 0, 0, 0, 1 << 30))
                # one scaler for the video, not one owned by each frame (see video.display_matrix)
                frame = scale.reformat(frame, width=ow, height=oh, format="yuv420p")
                # frames numbered afresh: the source's timestamps (B-frame reordering, odd
                # time bases, edit lists) must not reach the encoder
                frame.pts, frame.time_base = n, step
                for packet in vout.encode(frame):
                    out.mux(packet)
                n += 1
            for packet in vout.encode():
                out.mux(packet)
    tmp.replace(dst)
    return n


def tag(short_side: int, gop: int, crf: int, preset: str) -> str:
    """The header comment of a rewrite: the GOP first (the reader's fast index reads it), then the
    other settings, so that a rerun knows a finished rewrite of the same settings."""
    return f"{PREPARED_TAG}{gop} short_side={short_side} crf={crf} preset={preset}"


def _already_written(dst: str, want: str) -> bool:
    import av

    try:
        with av.open(dst) as c:
            return c.metadata.get("comment") == want and bool(c.streams.video)
    except Exception:  # noqa: BLE001 - missing or unreadable: written again
        return False


def _job(args: tuple) -> tuple[str, str | None, bool]:
    """(source, error or None, whether an earlier run's rewrite was kept)."""
    src, dst, short_side, gop, crf = args
    try:
        if Path(src).stat().st_size == 0:
            return src, "zero-byte file", False
        if Path(dst).is_file() and _already_written(dst, tag(short_side, gop, crf, PRESET)):
            return src, None, True  # finished by an earlier run (written under a temporary name, then renamed)
        if reencode(src, dst, short_side, gop, crf) == 0:
            return src, "no frames decoded", False
        return src, None, False
    except FileNotFoundError:
        return src, "file not found", False
    except Exception as e:  # a broken input: skip and report it
        Path(str(dst) + ".part").unlink(missing_ok=True)
        return src, f"{type(e).__name__}: {e}", False


def prepare_list(list_file, root: str, out_dir, fmt: str = "list", label_map: str = "", short_side: int = 256,
                 gop: int = DEFAULT_GOP, crf: int = 23, workers: int = 4, progress: bool = True) -> dict:
    """Re-encode every video of `list_file` under `out_dir` (same relative paths) and write
    `out_dir/<list name>` with the lines whose video was written."""
    if fmt not in ("list", "mmaction_video"):
        raise AnnotationError(f"tpn data prepare reads video lists (format list or mmaction_video), not {fmt}")
    list_file, out_dir = Path(list_file), Path(out_dir)
    if not list_file.is_file():
        raise AnnotationError(f"{list_file}: annotation file not found")
    for flag, value, low, high in (("--short-side", short_side, 16, 8192), ("--gop", gop, 1, 10000), ("--crf", crf, 0, 51)):
        if not low <= value <= high:
            raise TpnError(f"tpn data prepare {flag} {value}: must lie in [{low}, {high}]")
    if out_dir.resolve() == Path(root).resolve() or (out_dir / list_file.name).resolve() == list_file.resolve():
        raise AnnotationError(f"tpn data prepare --out {out_dir}: the folder of the originals (--root {root}) or of "
                              "the list; prepared copies go to another folder, the originals stay as they are")
    names = {n: i for i, n in enumerate(read_label_names(label_map))} if label_map else None
    lines = []
    for n, line in enumerate(read_text(list_file).splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            rel, _, _ = parse_line(line, fmt, names, f"{list_file}:{n}")
            lines.append((line, rel))
    jobs = [(str(Path(root) / rel), str(out_dir / rel), short_side, gop, crf) for _, rel in lines]
    same = next((src for src, dst, *_ in jobs if Path(src).resolve() == Path(dst).resolve()), None)
    if same is not None:  # a path that leads back into --root (`..`, a link)
        raise AnnotationError(f"tpn data prepare: {same} would be written over itself; choose another --out")
    results = map_in_processes(_job, jobs, workers, chunksize=2, desc="prepare" if progress else None)
    failed = [{"path": src, "error": err} for src, err, _ in results if err]
    kept = [line for (line, _), (_, err, _) in zip(lines, results) if not err]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / list_file.name, "\n".join(kept) + ("\n" if kept else ""))
    report = {"list": str(list_file), "out": str(out_dir), "written": len(kept),
              "kept_from_earlier_run": sum(reused for _, _, reused in results), "failed": failed,
              "short_side": short_side, "gop": gop, "crf": crf}
    write_text_atomic(out_dir / f"{list_file.stem}.prepare.json", json.dumps(report, indent=1))
    return report
