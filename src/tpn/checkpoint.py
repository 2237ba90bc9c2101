"""Checkpoint files: atomic writes, safe reads, strict state_dict loading with clear errors.

A `tpn` checkpoint is a dict saved by `torch.save` holding only tensors, numbers, strings,
lists and dicts:
    {"format": "tpn", "state_dict": {...}, "config": {...}, "label_names": [...], ...}
Training checkpoints add optimiser, scheduler and RNG state (see tpn.engine). Every file is
read by `load_file`, which never runs code from it (see its docstring).
"""
from __future__ import annotations

import collections
import io
import math
import mmap
import pickle
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from tpn.errors import TpnError, first_line, listing, write_atomic
from tpn.pickle_scan import brief, check_tree, scan, shown

FORMAT = "tpn"


class CheckpointError(TpnError):
    pass


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder (`.<name>.*.tmp`), fsync, then rename over
    `path`. A write that fails (a full disk, a quota, no permission) removes the temp file,
    leaves any file at `path` as it was, and raises a one-line CheckpointError with the OS's reason."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: torch.save(obj, f))
    except BaseException as e:
        # torch.save reports a failed write of its file object as a RuntimeError raised while
        # handling the OSError: the OS's reason is in the exception's context
        cause = next((c for c in (e, e.__cause__, e.__context__) if isinstance(c, OSError)), None)
        if cause is None:
            raise
        raise CheckpointError(f"{path}: not saved ({cause.strerror or cause}); "
                              f"{'the file already there is unchanged' if path.exists() else 'no file was written'}") \
            from None
    return path


class _Unreadable:
    """Stands in for any non-tensor object of a foreign checkpoint; it runs no code."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self) -> str:
        return f"<unreadable {getattr(type(self), 'qualname', '?')}>"


# what torch.save names a storage by, in both layouts (the legacy classes name their dtype)
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexDoubleStorage": torch.complex128, "ComplexFloatStorage": torch.complex64, "UntypedStorage": torch.uint8,
}


# the dtypes a pickle may name (`torch.float32`...), looked up in torch's own namespace: a name
# that is not one never reaches getattr (which would import a submodule of that name)
_DTYPES = {k: v for k, v in vars(torch).items() if isinstance(v, torch.dtype)}


# what a weights file may hold: numbers, not quantized, bit or unsigned-wide types whose conversions torch lacks
_TENSOR_DTYPES = {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
                  torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128}


class _StorageType(NamedTuple):
    dtype: torch.dtype


class _Storage(NamedTuple):
    """A storage read from the file: raw bytes and the element type the pickle declared."""
    data: torch.UntypedStorage
    dtype: torch.dtype


def _tensor(storage, offset, size, stride, dtype=None) -> torch.Tensor:
    """A view of a read storage, after checking that the declared shape lies inside it (a
    declared shape can neither allocate nor reach memory beyond the storage)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage from the file")
    if not (type(size) in (tuple, list) and type(stride) in (tuple, list) and len(size) == len(stride) <= 64
            and all(type(v) is int and 0 <= v < 2**63 for v in (offset, *size, *stride))):
        raise pickle.UnpicklingError(f"a tensor with an invalid shape {brief(size)} / strides {brief(stride)}")
    dtype = dtype or storage.dtype
    if dtype not in _TENSOR_DTYPES:
        raise pickle.UnpicklingError(f"a tensor of dtype {dtype}, which tpn does not read")
    elements = storage.data.nbytes() // dtype.itemsize
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
    if last >= elements or math.prod(size) > max(elements, 1):  # no more values than stored (stride-0 views)
        raise pickle.UnpicklingError(f"a tensor of shape {tuple(size)} reaches element {last} of a storage "
                                     f"of {elements}")
    return torch.empty((0,), dtype=dtype).set_(storage.data, offset, tuple(size), tuple(stride))


def _with_grad(t: torch.Tensor, requires_grad) -> torch.Tensor:
    return t.requires_grad_(bool(requires_grad)) if t.is_floating_point() or t.is_complex() else t


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _with_grad(_tensor(storage, offset, size, stride), requires_grad)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError("a tensor without a dtype")
    return _with_grad(_tensor(storage, offset, size, stride, dtype), requires_grad)


def _rebuild_parameter(data, requires_grad, backward_hooks=None):
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return nn.Parameter(data, requires_grad=bool(requires_grad))


def _torch_size(dims=()):
    return torch.Size(tuple(dims))


def _device(*args):
    return torch.device("cpu")  # every storage is read to the CPU


def _ordered_dict(*args):
    return collections.OrderedDict(*args)


# Everything torch.save writes for tensors and plain containers, each mapped to our own small
# function (never to torch's: a pickle may set attributes on what it loads); any other global a
# pickle names (a function, a class) becomes an inert `_Unreadable`, so calling it does nothing.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _device,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


def _stateful(name: str) -> bool:
    """BUILD may set state on an OrderedDict (a state_dict's `_metadata`) and on placeholders (inert)."""
    return name == "OrderedDict" or name not in {n for _, n in _ALLOWED_GLOBALS}


def _fresh(fn):
    """A new function object calling `fn`: a pickle may set attributes on what it loads
    (`__defaults__` too), and must not reach our readers' functions that way."""

    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    return call


class _Budget:
    """Bytes a file may make us allocate for its storages: no more than the file holds."""

    def __init__(self, path: Path, size: int):
        self.path, self.left = path, size

    def take(self, nbytes: int, what: str) -> None:
        if type(nbytes) is not int or nbytes < 0 or nbytes > self.left:
            raise CheckpointError(f"{self.path}: {what} declares {nbytes} bytes, more than the file holds "
                                  f"({self.left} bytes left): refused") from None
        self.left -= nbytes


class _Unpickler(pickle.Unpickler):
    """Builds only allowed globals, storages through `storage` (given the pickle's storage id)."""

    def __init__(self, file, skipped: set[str], storage):
        super().__init__(file, encoding="latin1")
        self.skipped, self.storage = skipped, storage

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return _fresh(_ALLOWED_GLOBALS[(module, name)])
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        qualname = shown(f"{module}.{name}")  # it goes into one-line messages
        self.skipped.add(qualname)
        return type("placeholder", (_Unreadable,), {"qualname": qualname})

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unknown persistent id {brief(pid)}")
        if not isinstance(pid[1], _StorageType):
            raise pickle.UnpicklingError("a storage of an unknown type")
        return self.storage(pid)


def _read_zip(path: Path, skipped: set[str], budget: _Budget) -> Any:
    """torch's zip layout, read with torch's own archive reader (so the records are the ones
    torch itself sees, whatever other directories the file carries), never handed to
    TorchScript: only `data.pkl` and the storages it names are read."""
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = set(reader.get_all_records())
    except RuntimeError as e:  # miniz's own words up to its first sentence's end, not its advice after it
        why = first_line(e).removeprefix("PytorchStreamReader failed reading zip archive: ").split(". ")[0]
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged zip archive: {why}; truncated or "
                              "corrupted?)") from None
    if "constants.pkl" in records or any(r.startswith("code/") for r in records):
        raise CheckpointError(f"{path}: a TorchScript archive holds code; tpn reads weights only "
                              "(save the model's state_dict with torch.save)")
    if "data.pkl" not in records:
        raise CheckpointError(f"{path}: a zip archive without data.pkl, not a torch.save checkpoint")
    if "byteorder" in records and reader.get_record("byteorder") != sys.byteorder.encode():
        raise CheckpointError(f"{path}: saved on a machine of the other byte order; tpn reads "
                              f"{sys.byteorder}-endian checkpoints")
    storages: dict[str, _Storage] = {}
    own = None if hasattr(reader, "get_record_size") else _StoredRecords(path, reader)
    crcs = _record_crcs(path)

    def verified(name: str, data):  # torch's reader does not check a record's CRC-32: bytes changed on disk would load
        if name in crcs and zlib.crc32(data) != crcs[name]:
            raise CheckpointError(f"{path}: damaged checkpoint ({name} fails its CRC-32 check: its bytes changed "
                                  "after it was saved)")
        return data

    def record(name: str) -> int:
        if name not in records:
            raise CheckpointError(f"{path}: damaged checkpoint ({name} is missing)")
        size = reader.get_record_size(name) if own is None else own.size(name)
        budget.take(size, name)
        return size

    def storage(pid) -> _Storage:
        _, kind, key, _location, numel = pid
        if key not in storages:
            name = f"data/{key}"
            nbytes = numel * kind.dtype.itemsize if type(numel) is int else -1
            size = record(name)
            if nbytes != size:
                raise CheckpointError(f"{path}: damaged checkpoint ({name} holds {size} bytes, "
                                      f"its tensor declares {nbytes})")
            if own is None:
                data = reader.get_storage_from_record(name, nbytes, torch.UntypedStorage).untyped_storage()
                verified(name, torch.empty(0, dtype=torch.uint8).set_(data).numpy())
            else:
                data = torch.frombuffer(bytearray(verified(name, own.read(name))), dtype=torch.uint8).untyped_storage() \
                    if nbytes else torch.UntypedStorage(0)
            storages[key] = _Storage(data, kind.dtype)
        return _Storage(storages[key].data, kind.dtype)

    record("data.pkl")
    pickled = verified("data.pkl", reader.get_record("data.pkl") if own is None else own.read("data.pkl"))
    scan(io.BytesIO(pickled), _stateful)
    return _Unpickler(io.BytesIO(pickled), skipped, storage).load()


def _record_crcs(path: Path) -> dict[str, int]:
    """CRC-32 of each record, by torch's record name (the zip name after its top folder), from
    the zip's central directory; a name found twice, or a directory Python cannot read, is left
    unchecked."""
    try:
        with zipfile.ZipFile(path) as z:
            entries = [(e.filename.partition("/")[2], e.CRC) for e in z.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return {}
    names = collections.Counter(n for n, _ in entries)
    return {n: crc for n, crc in entries if names[n] == 1}


class _StoredRecords:
    """Record sizes and bytes for torch builds whose archive reader has no `get_record_size`
    (torch 2.11 has none; 2.13 has it). Where a record starts is still torch's answer
    (`get_record_offset`); its size is that of the zip directory entry of the local header just
    before that offset (torch writes sizes after the data, so the local header has none), and
    the bytes are read from the file here: only uncompressed records (what torch.save writes),
    never more bytes than the file holds, so no record makes the reader allocate more than the
    file's size whatever its directories claim."""

    _SIG = b"PK\x03\x04"

    def __init__(self, path: Path, reader):
        self.path, self.reader = path, reader
        self.file_size = path.stat().st_size
        self.found: dict[str, tuple[int, int]] = {}
        self.entries: dict | None = None

    def _central(self) -> dict:
        if self.entries is None:
            try:
                with zipfile.ZipFile(self.path) as z:
                    self.entries = {e.header_offset: e for e in z.infolist()}
            except (zipfile.BadZipFile, OSError, ValueError) as e:
                raise CheckpointError(f"{self.path}: not a readable checkpoint (damaged zip archive: "
                                      f"{first_line(e)})") from None
        return self.entries

    def _locate(self, name: str) -> tuple[int, int]:
        if name in self.found:
            return self.found[name]
        try:
            start = self.reader.get_record_offset(name)
        except RuntimeError as e:
            raise CheckpointError(f"{self.path}: damaged checkpoint ({name}: {first_line(e)})") from None
        with open(self.path, "rb") as f:  # the local header: 30 bytes, the name, an extra field
            lo = max(0, start - 30 - 65535 - 4096)
            f.seek(lo)
            window = f.read(start - lo)
        at = len(window)
        while (at := window.rfind(self._SIG, 0, at)) >= 0:
            head = window[at:at + 30]
            if len(head) == 30:
                n, e = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
                stored_name = window[at + 30:at + 30 + n].decode("utf-8", "replace")
                if at + 30 + n + e == len(window) and (stored_name == name or stored_name.endswith("/" + name)):
                    break
        else:
            raise CheckpointError(f"{self.path}: damaged checkpoint (no zip header before {name})")
        entry = self._central().get(lo + at)  # the directory entry of that very header
        if entry is None:
            raise CheckpointError(f"{self.path}: damaged checkpoint ({name} has no zip directory entry)")
        if entry.compress_type != 0 or entry.compress_size != entry.file_size:
            raise CheckpointError(f"{self.path}: {name} is a compressed zip record; torch.save writes them "
                                  "uncompressed: refused")
        size = entry.file_size
        if not 0 <= size <= self.file_size - start:
            raise CheckpointError(f"{self.path}: damaged checkpoint ({name} declares {size} bytes, past the "
                                  "file's end)")
        self.found[name] = (start, size)
        return start, size

    def size(self, name: str) -> int:
        return self._locate(name)[1]

    def read(self, name: str) -> bytes:
        start, size = self._locate(name)
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read(size)
        if len(data) != size:
            raise CheckpointError(f"{self.path}: damaged checkpoint ({name} is cut short)")
        return data


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _read_legacy(path: Path, skipped: set[str], budget: _Budget) -> Any:
    """torch's legacy layout: five pickles (magic number, protocol, system info, the object,
    the storage keys), then each storage as an element count and its raw bytes."""
    declared: dict[str, _Storage] = {}

    def storage(pid) -> _Storage:
        if len(pid) != 6:
            raise pickle.UnpicklingError("a storage id of the wrong length")
        _, kind, key, _location, numel, view = pid
        if key not in declared:
            nbytes = numel * kind.dtype.itemsize if type(numel) is int else -1
            budget.take(nbytes, f"storage {key}")
            declared[key] = _Storage(torch.empty(nbytes, dtype=torch.uint8).untyped_storage(), kind.dtype)
        root = declared[key]
        if view is None:
            return _Storage(root.data, kind.dtype)
        _view_key, offset, size = view
        begin, end = offset * kind.dtype.itemsize, (offset + size) * kind.dtype.itemsize
        if not (0 <= begin <= end <= root.data.nbytes()):
            raise pickle.UnpicklingError(f"a view outside storage {key}")
        return _Storage(root.data[begin:end], kind.dtype)

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        def load():  # the opcodes scanned (through the map: no read allocates more than the file) first
            m.seek(f.tell())
            scan(m, _stateful)
            return _Unpickler(f, skipped, storage).load()

        header = [load() for _ in range(3)]
        if header[0] != _LEGACY_MAGIC:
            raise RuntimeError("Invalid magic number: neither torch's zip nor its legacy layout")
        if header[1] != _LEGACY_PROTOCOL:
            raise RuntimeError(f"Invalid legacy protocol version {brief(header[1])}")
        obj = load()
        keys = load()
        if not (isinstance(keys, list) and all(type(k) is str for k in keys)) or sorted(keys) != sorted(declared):
            raise CheckpointError(f"{path}: damaged checkpoint (its storage list does not match its tensors)")
        for key in keys:
            target = declared[key]
            count = int.from_bytes(f.read(8), "little")
            if count * target.dtype.itemsize != target.data.nbytes():
                raise CheckpointError(f"{path}: damaged checkpoint (storage {key} holds {count} elements, "
                                      f"its tensors declare {target.data.nbytes() // target.dtype.itemsize})")
            view = torch.empty(0, dtype=torch.uint8).set_(target.data).numpy()
            if f.readinto(memoryview(view)) != view.nbytes:
                raise CheckpointError(f"{path}: damaged checkpoint (truncated in storage {key})")
    return obj


def load_file(path: str | Path, foreign: bool = True) -> tuple[Any, list[str]]:
    """Load a checkpoint without executing code from it and without allocating more than it holds.

    torch.load is not used: torch's zip layout is read with torch's own archive reader (the
    records torch sees), its legacy layout by our own small reader, and no path leads to
    TorchScript. Every pickle is read by an unpickler that builds only tensors and plain
    containers; any other class or function it names is replaced by an inert placeholder that
    is never called. Storages may not declare more bytes than the file holds, and a tensor's
    declared shape must lie inside its storage. Returns (object, skipped), where `skipped`
    names the placeholders' classes (e.g. an mmaction2 checkpoint's `meta` objects). A file
    that holds them is refused when `foreign` is False, or when it says it is a tpn checkpoint
    (tpn writes none). A missing, empty or corrupt file, a TorchScript or tar archive raises
    CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and tarfile.is_tarfile(path):
        raise CheckpointError(f"{path}: a tar archive, not a checkpoint (torch's original tar layout is not read)")
    skipped: set[str] = set()
    budget = _Budget(path, size)
    try:
        obj = (_read_zip if head == b"PK\x03\x04" else _read_legacy)(path, skipped, budget)
        check_tree(obj)
    except CheckpointError:
        raise
    except Exception as e:
        refused = f"; it names {', '.join(sorted(skipped))}, which tpn never runs" if skipped else ""
        if not skipped and head[:1] != b"\x80" and head != b"PK\x03\x04":  # torch.save writes protocol 2+
            raise CheckpointError(f"{path}: not a readable checkpoint (neither torch's zip format nor a pickle of "
                                  f"protocol 2 or later, as torch.save writes; it starts with {head!r})") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line(e)}{refused})") \
            from None
    if skipped and (not foreign or isinstance(obj, dict) and obj.get("format") == FORMAT):
        raise CheckpointError(f"{path}: a tpn checkpoint holds only tensors and plain values, this one also "
                              f"names {', '.join(sorted(skipped))} (never run)")
    return obj, sorted(skipped)


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail listing missing, unexpected and mis-shaped ones."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        raise misfit_error(f"{source}: weights do not fit the model", missing, unexpected, misshaped)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:  # a tensor of the right shape that cannot be copied in
        raise CheckpointError(f"{source}: weights do not load ({first_line(e)})") from None


def misfit_error(what: str, missing: list[str], unexpected: list[str], misshaped: list[str]) -> CheckpointError:
    """One line listing (the first 8 of) each kind of tensor that does not fit."""
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            parts.append(f"{len(items)} {label}: {listing(items)}")
    return CheckpointError(f"{what}: " + "; ".join(parts))
