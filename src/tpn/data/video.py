"""Decoding frames from video files (PyAV) and raw-frame folders.

`read_clip(path, pick)` opens a video once, learns its frame count, asks `pick(n)` for
the frame indices and returns exactly those frames (0-based, presentation order; the
same frames a sequential decode yields at those positions) as uint8 RGB (len, H, W, 3).

How frames are found: the packets are demuxed once (no decoding: cheap next to any
decode) to get every frame's timestamp and the keyframes. A frame's index is the rank of
its timestamp, so seeking never shifts indices, B-frames and odd time bases included.
For each wanted frame the reader seeks to the keyframe at or before it only when that
keyframe lies beyond the frame the decoder would produce next; otherwise it decodes
forward. So a long-GOP video (keyframes every 250 frames) is decoded once from the
start, a short-GOP one only around the wanted frames. Videos written by `tpn data prepare`
carry a tag (constant rate, no B-frames, keyframe every `gop` frames) and get the same index
from their header without the demux pass.

Frames nobody needs are not decoded: between the keyframe and the last wanted frame, the
packet of an unwanted frame that no other frame refers to (H.264 nal_ref_idc 0, HEVC
sub-layer non-reference; `tpn.data.nal`) is not sent to the decoder, and after the packet
of the last wanted frame in decode order the decoder is drained instead of fed. With x264's
default B-pyramid an 8x8 training clip decodes 88 instead of 156 frames (docs/data.md). Other
codecs drop nothing.

Only wanted frames are converted to RGB, through
one swscale context per video. One decoder thread and one converter thread per reader:
data-loader workers give the parallelism (more threads cost more CPU per clip, and PyAV's
converter otherwise starts a pool of as many threads as the machine has CPUs for every video:
docs/data.md, "Where a CPU worker's time goes").

A file's index (the demux pass above) and the non-reference flags learned while decoding it are
kept in `VideoReader.index_cache` (an `IndexCache`, least recently used dropped beyond its byte
bound), so a process that reads a video again (a loader worker in a later epoch) opens it without
the demux pass; a file rewritten since is indexed afresh.

Frames come out upright, as a player shows them: a display matrix on the stream (phone videos
filmed in portrait carry a 90 or 270 degree rotation; a flipped video adds a mirror) is applied
whole to every frame, and with it the width and height that the transforms crop from. A matrix
that is not a quarter turn with or without a mirror is refused (`VideoError`).

A video that cannot give the frames raises `VideoError` (missing, zero bytes, not a
video, truncated: fewer packets than its header announces, or a frame that does not decode),
and so does one whose header declares frames too large to hold (`check_frame_size`: its size,
or its size after the short-side resize, above `max_pixels`), before anything is decoded.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from tpn.data.nal import nonref_test
from tpn.errors import TpnError


class VideoError(TpnError):
    """A video that cannot be read (missing, empty, corrupt, truncated or too short)."""


def _why(e: Exception) -> str:
    """An exception as one short phrase (PyAV's messages repeat the path)."""
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


# Seek only when it skips more than this many frames: a seek costs a decoder flush and a
# restart (B-frame delay included), which outweighs decoding a short run of frames forward.
# Without B-frames (packets in presentation order, as `tpn data prepare` writes) the restart
# is cheap: seeking past a few frames already pays.
SEEK_MIN_SKIP = 24
SEEK_MIN_SKIP_NO_REORDER = 4
# `tpn data prepare` tags its files (container comment): constant rate, no B-frames, a
# keyframe every `gop` frames, so the index is arithmetic and the demux pass is skipped.
PREPARED_TAG = "tpn-prepare gop="
_UNREAD = object()  # a display matrix not read yet (None: the video has none)


class FileIndex(NamedTuple):
    """What the demux pass learns of a file: `pts` (int64, every packet's timestamp in decode order;
    None when some packet has none), `keys` (bool, which of them are keyframes), `num_frames`; and
    `nonref` (one byte per frame in presentation order: 0 not known yet, 1 a reference, 2 not),
    filled in by the readers that decode it."""
    num_frames: int
    pts: np.ndarray | None
    keys: np.ndarray | None
    nonref: bytearray

    def nbytes(self) -> int:
        arrays = sum(a.nbytes for a in (self.pts, self.keys) if a is not None)
        return arrays + len(self.nonref) + INDEX_ENTRY_OVERHEAD


# bytes an index entry costs besides its arrays (its key, the arrays' and the record's Python
# objects, the dict slot), as measured with tracemalloc (tests/test_data_video.py)
INDEX_ENTRY_OVERHEAD = 1024


class IndexCache:
    """`FileIndex`es by file, at most `max_bytes` of them (`FileIndex.nbytes`), the least recently
    used dropped first: a 10 s 30 fps video takes about 4 KB, so the default 32 MiB keeps about
    8000. A file is known by its path, size, inode and modification and change times, so a file
    rewritten or replaced is indexed afresh. Each process has its own (a forked loader worker
    starts with a copy of its parent's)."""

    def __init__(self, max_bytes: int = 32 << 20):
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._entries: OrderedDict[tuple, tuple[FileIndex, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(path: Path) -> tuple:
        st = path.stat()
        return str(path), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns

    def get(self, key: tuple) -> FileIndex | None:
        got = self._entries.get(key)
        if got is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return got[0]

    def put(self, key: tuple, entry: FileIndex) -> None:
        size = entry.nbytes() + len(key[0])
        if key in self._entries:
            self.bytes -= self._entries.pop(key)[1]
        if size > self.max_bytes:
            return
        self._entries[key] = entry, size
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = self.hits = self.misses = 0


class VideoReader:
    """One open video file. Use as a context manager; `num_frames` counts the demuxed packets (a
    prepared file's: its header, trusted until a frame decodes off it: then the file is demuxed).

    `frames_decoded` (packets sent to the decoder) and `packets_dropped` (frames not decoded
    because nothing needed them) count the work since opening;
    `drop_unneeded = False` (class or instance) sends every packet to the decoder.
    `index_cache` (class: every reader of the process) keeps files' indexes across readers; None
    demuxes every file at every open. `thread_type` and `thread_count` are FFmpeg's decoder
    threading, `convert_threads` swscale's (0: one per CPU); set them on the class before opening
    (the benchmarks vary them).
    """

    min_skip = SEEK_MIN_SKIP
    drop_unneeded = True
    index_cache: IndexCache | None = IndexCache()
    thread_type, thread_count, convert_threads = "SLICE", 1, 1

    def __init__(self, path: str | Path):
        import av
        from av.video.reformatter import VideoReformatter

        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: {'a folder, not a video file' if self.path.is_dir() else 'file not found'}")
        if self.path.stat().st_size == 0:
            raise VideoError(f"{self.path}: zero-byte file")
        try:
            self.container = av.open(str(self.path))
        except Exception as e:  # av raises many subclasses (InvalidDataError, ...)
            raise VideoError(f"{self.path}: cannot open video ({_why(e)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.path}: no video stream")
        self.stream = self.container.streams.video[0]
        # One colour converter for all frames of the video: a frame's own `to_ndarray(format=)`
        # builds a new swscale context each time, which costs more than the conversion itself.
        self._to_rgb = VideoReformatter()
        self._matrix = _UNREAD  # the display matrix, from the first frame kept
        self.stream.thread_type = self.thread_type
        self.stream.codec_context.thread_count = self.thread_count
        self._nonref = nonref_test(self.stream.codec_context.name, self.stream.codec_context.extradata)
        self.frames_decoded = self.packets_dropped = 0
        self._decode_pos = None  # decode position of each frame; None: decode order is presentation order
        self._pts_index: dict[int, int] = {}
        try:
            self.fast_index = self._index_from_tag()
            if not self.fast_index:
                self._index()
        except Exception:
            self.container.close()
            raise

    def _index(self) -> None:
        """Timestamps of all frames (sorted) and the indices of keyframes: the cache's when it
        knows the file, else from the packets (`_demux`), then kept in the cache."""
        cache = self.index_cache
        key = cache.key(self.path) if cache is not None else None
        entry = cache.get(key) if cache is not None else None
        if entry is None:
            entry = self._demux()
            if cache is not None:
                cache.put(key, entry)
        self._set_index(entry)

    def _demux(self) -> FileIndex:
        """Every packet's timestamp and keyframe flag, in decode order (one pass, no decoding)."""
        pts, keys = [], []
        self.container.seek(0, stream=self.stream, backward=True, any_frame=False)
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0 or packet.is_discard:  # edit-list lead-in: the decoder drops it
                    continue
                pts.append(packet.pts)
                keys.append(packet.is_keyframe)
        except Exception as e:
            raise VideoError(f"{self.path}: cannot read packets ({_why(e)})") from None
        declared = self.stream.frames or 0
        if declared and len(pts) < declared:
            raise VideoError(f"{self.path}: truncated: header announces {declared} frames, {len(pts)} present")
        self.container.seek(0, stream=self.stream, backward=True, any_frame=False)
        known = bool(pts) and None not in pts
        return FileIndex(len(pts), np.asarray(pts, dtype=np.int64) if known else None,
                         np.asarray(keys, dtype=bool) if known else None, bytearray(len(pts)))

    def _set_index(self, index: FileIndex) -> None:
        self.num_frames = index.num_frames
        self.timestamps = None  # None: no usable timestamps, count frames sequentially instead
        self.keyframes = np.zeros(1, np.int64)
        self._decode_pos, self._pts_index, self._nonref_flags = None, {}, index.nonref
        if index.pts is not None:
            decode_order = index.pts
            if np.all(np.diff(decode_order) > 0) and self.min_skip == SEEK_MIN_SKIP:
                self.min_skip = SEEK_MIN_SKIP_NO_REORDER  # no B-frames: seeking is cheap
            order = np.argsort(decode_order, kind="stable")
            ts = decode_order[order]
            if np.all(np.diff(ts) > 0):
                self.timestamps = ts
                rank = np.empty_like(order)
                rank[order] = np.arange(len(order))
                self.keyframes = np.sort(rank[index.keys])
                self._decode_pos = order.tolist()
                self._pts_index = dict(zip(ts.tolist(), range(len(ts))))

    def _index_from_tag(self) -> bool:
        """The index of a prepared video from its header alone (no demux pass over the
        packets). Any frame that then decodes off this index makes `get_frames`
        demux the file and retry, so a wrong tag costs time, never a wrong frame."""
        tag = self.container.metadata.get("comment", "")
        if not tag.startswith(PREPARED_TAG):
            return False
        try:
            gop = int(tag[len(PREPARED_TAG):].split()[0])
        except (ValueError, IndexError):
            return False
        s = self.stream
        n, rate, tb = s.frames or 0, s.average_rate, s.time_base
        if n <= 0 or gop <= 0 or not rate or not tb:
            return False
        step = 1 / (rate * tb)  # frame duration in time-base units
        if step.denominator != 1:
            return False
        self.num_frames = n
        self.timestamps = (s.start_time or 0) + np.arange(n, dtype=np.int64) * int(step)
        self.keyframes = np.arange(0, n, gop, dtype=np.int64)
        self._pts_index = dict(zip(self.timestamps.tolist(), range(n)))
        self._nonref_flags = bytearray(n)
        self.min_skip = SEEK_MIN_SKIP_NO_REORDER
        return True

    def info(self) -> VideoInfo:
        """Frame count, rate and the size frames come out at (upright: a display matrix with a
        quarter turn swaps width and height; learning it decodes the first frame)."""
        rate = self.stream.average_rate or self.stream.guessed_rate or 30
        cc = self.stream.codec_context
        h, w = self.get_frames([0]).shape[1:3] if self.num_frames else (cc.height, cc.width)
        return VideoInfo(self.num_frames, float(rate), w, h)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ decoding
    def _frame_index(self, frame, counter: int) -> int:
        if self.timestamps is None:
            return counter
        i = self._pts_index.get(frame.pts)  # a dict: a fraction of np.searchsorted's time per frame
        if i is not None and self.timestamps[i] == frame.pts:
            return i
        if frame.pts is None:
            raise VideoError(f"{self.path}: a decoded frame carries no timestamp")
        i = int(np.searchsorted(self.timestamps, frame.pts))
        if i == 0 and frame.pts < self.timestamps[0]:
            return -1  # before the first presented frame (edit-list lead-in): not a frame of the video
        if i >= len(self.timestamps) or self.timestamps[i] != frame.pts:
            raise VideoError(f"{self.path}: decoded frame with timestamp {frame.pts} not among the packets")
        return i

    def get_frames(self, indices, seek: bool = True) -> np.ndarray:
        """Exactly the frames `indices` (any order, repeats allowed) as uint8 (len, H, W, 3) RGB."""
        try:
            return self._get_frames(indices, seek)
        except VideoError:
            if not self.fast_index:
                raise
            self.fast_index = False  # the tag's index did not hold: demux, check, retry
            self._index()
            return self._get_frames(indices, seek)

    def _get_frames(self, indices, seek: bool, drop: bool = True) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            raise ValueError("no frame indices requested")
        wanted = np.unique(indices)
        if wanted[0] < 0 or wanted[-1] >= self.num_frames:
            bad = wanted[0] if wanted[0] < 0 else wanted[-1]
            raise VideoError(f"{self.path}: frame {bad} requested, the video has {self.num_frames} frames")
        seek = seek and self.timestamps is not None
        drop = drop and self.drop_unneeded and self._nonref is not None and self.timestamps is not None
        got: dict[int, np.ndarray] = {}
        try:
            for start, targets in self._runs(wanted.tolist(), seek):
                missing = self._decode_run(start, targets, got, seek, drop)
                if missing is not None:
                    if seek or drop:  # the demuxer landed past the keyframe: a plain full decode
                        return self._get_frames(indices, seek=False, drop=False)
                    raise VideoError(f"{self.path}: frame {missing} missing from the decoded stream")
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(f"{self.path}: decoding failed ({_why(e)})") from None
        return np.stack([got[int(i)] for i in indices])

    def _runs(self, wanted: list[int], seek: bool) -> list[tuple[int, list[int]]]:
        """[(first frame to decode from, sorted frames of the run)]: a new run (a seek) starts
        when the keyframe before a wanted frame lies over `min_skip` frames beyond the last one."""
        runs: list[tuple[int, list[int]]] = []
        for w in wanted:
            key = int(self.keyframes[max(int(np.searchsorted(self.keyframes, w, side="right")) - 1, 0)])
            if not runs or (seek and key - (runs[-1][1][-1] + 1) > self.min_skip):
                runs.append((key if seek else 0, []))
            runs[-1][1].append(w)
        return runs

    def _is_nonref(self, idx: int, packet) -> bool:
        """Whether frame `idx` (its `packet`) is one no other frame refers to: the file's flag when
        a reader has parsed it before (the flags live in the index cache), else parsed and kept."""
        flag = self._nonref_flags[idx]
        if not flag:
            flag = self._nonref_flags[idx] = 2 if self._nonref(memoryview(packet)) else 1
        return flag == 2

    def _take(self, frame, counter: int, todo: set, got: dict) -> int:
        """Keep a decoded frame in `got` when wanted (upright); 1 if it was kept."""
        idx = self._frame_index(frame, counter)
        if idx not in todo or idx in got:
            return 0
        if self._matrix is _UNREAD:  # the stream's, on every frame: read once (reading it makes garbage)
            self._matrix = display_matrix(frame)
        rgb = self._to_rgb.reformat(frame, format="rgb24", threads=self.convert_threads).to_ndarray()
        got[idx] = upright(rgb, self._matrix, self.path)
        return 1

    def _decode_run(self, start: int, targets: list[int], got: dict, seek: bool, drop: bool) -> int | None:
        """Decode from frame `start` until every frame of `targets` is in `got`; returns a
        frame that did not come out (None when all did). With `drop`, packets of unwanted
        frames that no frame refers to are not sent to the decoder. With timestamps, feeding
        stops at the packet of the target last in decode order and the decoder is drained:
        later packets would only push reordered frames out."""
        self.container.seek(int(self.timestamps[start]) if seek else 0, stream=self.stream,
                            backward=True, any_frame=False)
        todo = set(targets)
        end_pts = None
        if self.timestamps is not None:
            last = max(targets, key=self._decode_pos.__getitem__) if self._decode_pos is not None else targets[-1]
            end_pts = int(self.timestamps[last])
        counter = 0  # frames since the start, for videos without timestamps
        left = len(todo)
        for packet in self.container.demux(self.stream):
            pts = packet.pts
            if drop and packet.size and not packet.is_keyframe:
                idx = self._pts_index.get(pts)
                if idx is not None and idx not in todo and self._is_nonref(idx, packet):
                    self.packets_dropped += 1
                    continue
            self.frames_decoded += packet.size > 0
            for frame in self.stream.decode(packet):
                left -= self._take(frame, counter, todo, got)
                counter += 1
            if left == 0:
                return None
            if pts is not None and pts == end_pts:  # drain: nothing after this packet is needed
                for frame in self.stream.decode(None):
                    left -= self._take(frame, counter, todo, got)
                    counter += 1
                break
            if packet.size == 0:  # the demuxer's end-of-stream packet: the decoder is drained
                w = next(t for t in targets if t not in got)
                raise VideoError(f"{self.path}: video ends before frame {w} (announced {self.num_frames} frames)")
        return next((t for t in targets if t not in got), None)


def display_matrix(frame) -> tuple[int, ...] | None:
    """A frame's display matrix, FFmpeg's 9 int32 (`AV_FRAME_DATA_DISPLAYMATRIX`), or None without
    one. Its 2x2 part (a, b, c, d) = (m[0], m[1], m[3], m[4]), 16.16 fixed point, shows a source
    pixel (p, q) at (a p + c q, b p + d q) plus an offset. PyAV caches a frame's side data in a
    reference cycle: `frame` is then freed by the garbage collector only, so call this on one frame
    per video, never on a frame that owns a converter (`frame.to_ndarray(format=...)`): freed by a
    collection in a forked loader worker, its converter's threads deadlock it."""
    from av.sidedata.sidedata import Type

    side = frame.side_data.get(Type.DISPLAYMATRIX)
    return None if side is None else tuple(int(x) for x in np.frombuffer(bytes(side), dtype="<i4"))


def upright(image: np.ndarray, matrix: tuple[int, ...] | None, path) -> np.ndarray:
    """A decoded (H, W, 3) image as a player shows it: the stream's display matrix (`display_matrix`)
    applied whole, a quarter turn (phone videos: 90, 180, 270 degrees) with or without a mirror,
    the eight orientations FFmpeg's player turns and flips for. Any other matrix is a `VideoError`."""
    if matrix is None:
        return image
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    if b == c == 0 and a and d:
        transpose, rows_reversed, columns_reversed = False, d < 0, a < 0
    elif a == d == 0 and b and c:  # a quarter turn: the shown column comes from the source row
        transpose, rows_reversed, columns_reversed = True, b < 0, c < 0
    else:
        raise VideoError(f"{path}: display matrix {[x / 65536 for x in (a, b, c, d)]} is not a turn by a multiple "
                         f"of 90 degrees with or without a mirror (the only ones supported)")
    if not (transpose or rows_reversed or columns_reversed):
        return image
    # turned as one 3-byte item per pixel: a third of the element copies of turning (H, W, 3) bytes
    pixels = image.view("V3")[..., 0]
    pixels = pixels.T if transpose else pixels
    pixels = np.ascontiguousarray(pixels[::-1 if rows_reversed else 1, ::-1 if columns_reversed else 1])
    return pixels.view(np.uint8).reshape(*pixels.shape, 3)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count (`VideoReader.num_frames`), fps and size."""
    with VideoReader(path) as reader:
        return reader.info()


def check_frame_size(path, width: int, height: int, max_pixels: int, short_side: int | None = None) -> None:
    """`VideoError` when frames of width x height, or those frames with the short side resized to
    `short_side`, have more than `max_pixels` pixels (`data.max_frame_pixels`): a 16384x16 video
    would otherwise make the short-side resize (to 262144x256) of the 80 frames of a 10-clip 8x8
    test allocate 15 GiB."""
    if width * height > max_pixels:
        raise VideoError(f"{path}: frames of {width}x{height} ({width * height:,} pixels) exceed "
                         f"data.max_frame_pixels ({max_pixels:,}); raise it to read this video")
    if short_side and min(width, height) > 0:
        from tpn.data.transforms import short_side_size

        h, w = short_side_size(height, width, short_side)
        if w * h > max_pixels:
            raise VideoError(f"{path}: frames of {width}x{height} resized to short side {short_side} would be "
                             f"{w}x{h} ({w * h:,} pixels), above data.max_frame_pixels ({max_pixels:,})")


def read_clip(path: str | Path, pick: Callable[[int], np.ndarray], seek: bool = True, max_pixels: int | None = None,
              short_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Open once, choose indices with `pick(num_frames)`, decode them: (frames, indices). With
    `max_pixels`, the header's frame size is checked first (`check_frame_size`)."""
    with VideoReader(path) as reader:
        if max_pixels:
            cc = reader.stream.codec_context
            check_frame_size(path, cc.width, cc.height, max_pixels, short_side)
        if reader.num_frames < 1:
            raise VideoError(f"{path}: no frames")
        indices = np.asarray(pick(reader.num_frames), dtype=np.int64)
        return reader.get_frames(indices.reshape(-1), seek=seek), indices


def read_video_frames(path: str | Path, indices, seek: bool = True) -> np.ndarray:
    """Decode exactly the frames `indices` of `path` as uint8 (len, H, W, 3) RGB."""
    with VideoReader(path) as reader:
        return reader.get_frames(indices, seek=seek)


def read_all_frames(path: str | Path) -> np.ndarray:
    """Plain sequential decode of every frame, upright (the reference the seeking reader is tested against)."""
    import av

    from av.video.reformatter import VideoReformatter

    to_rgb, matrix, frames = VideoReformatter(), _UNREAD, []
    try:
        with av.open(str(path)) as container:
            for f in container.decode(video=0):
                matrix = display_matrix(f) if matrix is _UNREAD else matrix
                frames.append(upright(to_rgb.reformat(f, format="rgb24").to_ndarray(), matrix, path))
        return np.stack(frames)
    except Exception as e:
        raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------- raw frames
def count_rawframes(folder: str | Path, template: str = "img_{:05d}.jpg") -> int:
    """Frames of a folder named `template` with 1-based numbers, counted until the first gap."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoError(f"{folder}: frame folder not found")
    n = 0
    while (folder / template.format(n + 1)).is_file():
        n += 1
    return n


def read_rawframes(folder: str | Path, indices, template: str = "img_{:05d}.jpg") -> np.ndarray:
    """Frames `indices` (0-based) of a folder of images named `template` (1-based numbers)."""
    from PIL import Image

    folder = Path(folder)
    cache: dict[int, np.ndarray] = {}
    out = []
    for i in np.asarray(indices).reshape(-1):
        i = int(i)
        if i not in cache:
            p = folder / template.format(i + 1)
            try:
                with Image.open(p) as im:
                    cache[i] = np.asarray(im.convert("RGB"))
            except FileNotFoundError:
                raise VideoError(f"{p}: frame file not found") from None
            except Exception as e:
                raise VideoError(f"{p}: cannot read frame ({type(e).__name__}: {e})") from None
        out.append(cache[i])
    return np.stack(out)


def stream_frames(path: str | Path, wanted: Callable[[int], bool], max_pixels: int | None = None,
                  short_side: int | None = None):
    """Decode `path` once from the start, in order, and yield (index, frame) for each frame whose
    0-based index `wanted(index)` accepts, upright uint8 (H, W, 3); only those are converted to RGB.
    No index pass and nothing kept: memory stays flat however long the video (`tpn predict
    --timeline`). The first item is `VideoInfo` (frame count 0: not known before the end)."""
    import av

    from av.video.reformatter import VideoReformatter

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: {'a folder, not a video file' if path.is_dir() else 'file not found'}")
    try:
        container = av.open(str(path))
    except Exception as e:
        raise VideoError(f"{path}: cannot open video ({_why(e)})") from None
    with container:
        if not container.streams.video:
            raise VideoError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = VideoReader.thread_type, VideoReader.thread_count
        cc = stream.codec_context
        if max_pixels:
            check_frame_size(path, cc.width, cc.height, max_pixels, short_side)
        yield VideoInfo(0, float(stream.average_rate or stream.guessed_rate or 30), cc.width, cc.height)
        to_rgb, matrix, index = VideoReformatter(), _UNREAD, 0
        try:
            for frame in container.decode(stream):
                if wanted(index):
                    matrix = display_matrix(frame) if matrix is _UNREAD else matrix
                    rgb = to_rgb.reformat(frame, format="rgb24", threads=VideoReader.convert_threads).to_ndarray()
                    yield index, upright(rgb, matrix, path)
                index += 1
        except VideoError:
            raise
        except Exception as e:
            raise VideoError(f"{path}: decoding failed at frame {index} ({_why(e)})") from None
