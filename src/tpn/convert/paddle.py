"""Reading PaddlePaddle weights without Paddle.

Two layouts, both as Paddle writes them:
- `.pdparams`: a pickle of {variable name: numpy array} (`fluid.save` / `paddle.save`).
  It is read by an unpickler that can only rebuild numeric numpy arrays (by np.frombuffer,
  never numpy's own `__setstate__`) and plain containers, so a hostile file cannot run code.
- Paddle 1.x persistables (`fluid.io.save_persistables` / `save_params` without a
  `filename`): a folder with one file per variable, named after it, each a serialised
  LoDTensor:
      uint32 version (0)
      uint64 lod_level, then per level: uint64 byte size + that many bytes of offsets
      uint32 tensor version (0)
      int32  size of a `VarType.TensorDesc` protobuf, then the protobuf
             (field 1: data type enum, field 2: repeated int64 dims)
      the raw little-endian data, C order.
A combined parameter file (`filename=...` / `__params__`) stores no names and cannot be
read without Paddle's program description; it is reported as such.
"""
from __future__ import annotations

import collections
import io
import math
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import torch

from tpn.checkpoint import CheckpointError
from tpn.errors import first_line
from tpn.pickle_scan import brief, check_tree, scan, shown

# framework.proto VarType.Type -> torch dtype
_PADDLE_DTYPES = {
    0: torch.bool, 1: torch.int16, 2: torch.int32, 3: torch.int64, 4: torch.float16,
    5: torch.float32, 6: torch.float64, 20: torch.uint8, 21: torch.int8, 22: torch.bfloat16,
}
_SKIPPED_FILES = {"__model__", "__params__"}


# --------------------------------------------------------------------------- .pdparams
class _Dtype:
    """`numpy.dtype(...)` as a pickle calls it, kept inert: numpy's own dtype `__setstate__`
    trusts the flags it is handed, so a forged dtype could make raw bytes be read as object
    pointers (a crash or worse). Only a plain numeric type name becomes a real dtype."""

    def __init__(self, name, *_args):
        self.name, self.byteorder = name, "="

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.byteorder = state[1]

    def resolve(self) -> np.dtype:
        if not (isinstance(self.name, str) and re.fullmatch(r"[biuf][1248]", self.name)):
            raise pickle.UnpicklingError(f"numpy dtype {brief(self.name)} is not allowed in a .pdparams file")
        return np.dtype(self.name).newbyteorder(self.byteorder)


class _Array:
    """What `_reconstruct(ndarray, ...)` + `__setstate__` would build, made by np.frombuffer
    from a checked dtype, shape and byte count instead of numpy's own `__setstate__`."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise pickle.UnpicklingError("unexpected numpy array state in a .pdparams file")
        _version, shape, dtype, fortran, raw = state
        self.array = _from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _from_bytes(raw, dtype, shape, order="C") -> np.ndarray:
    if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray, str)):
        raise pickle.UnpicklingError("only numeric numpy arrays are allowed in a .pdparams file")
    dt = dtype.resolve()
    raw = raw.encode("latin1") if isinstance(raw, str) else bytes(raw)  # Python 2 str read as latin1
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    if not (len(shape) <= 64 and all(type(n) is int and 0 <= n < 2**40 for n in shape)) \
            or len(raw) != math.prod(shape) * dt.itemsize:
        raise pickle.UnpicklingError(f"a numpy array's {len(raw)} bytes do not fill its shape {brief(shape)}")
    return np.frombuffer(raw, dt).reshape(shape, order=order).astype(dt.newbyteorder("="))  # a native copy


def _reconstruct(subtype, _shape, _typecode):
    if subtype is not _Array:
        raise pickle.UnpicklingError("only numpy arrays are allowed in a .pdparams file")
    return _Array()


def _scalar(dtype, raw):
    return _from_bytes(raw, dtype, ())[()]


def _frombuffer(buf, dtype, shape, order):  # protocol 5
    arr = _Array()
    arr.array = _from_bytes(buf, dtype, shape, order)
    return arr


def _latin1_bytes(text, encoding="latin1"):
    """`_codecs.encode(str, 'latin1')`, how protocol 2 pickles bytes, and nothing else: another
    codec (hex, base64) nested in itself would inflate a small file to gigabytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 text may be encoded in a .pdparams file")
    return text.encode("latin1")


def _empty_bytes(*args):
    """`bytes()`, how protocol 2 pickles b'': `bytes(n)` would allocate n bytes from a number."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not allowed in a .pdparams file")
    return b""


def _eval_data_only(expr, namespace=None):
    """Paddle 2.x pickles a LoDTensor as `eval('data', {'data': array})`: allow exactly that."""
    if expr != "data" or not isinstance(namespace, dict) or not isinstance(namespace.get("data"), _Array):
        raise pickle.UnpicklingError("refusing to evaluate code from a .pdparams file")
    return namespace["data"]


_NUMPY_FUNCTIONS = {(f"{core}.{module}", name): fn for core in ("numpy.core", "numpy._core")  # numpy 1.x, 2.x
                    for module, name, fn in (("multiarray", "_reconstruct", _reconstruct),
                                             ("multiarray", "scalar", _scalar), ("numeric", "_frombuffer", _frombuffer))}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numeric numpy arrays (as `_Array`) and plain containers; refuses anything else.
    No numpy function is handed to the pickle: each name maps to a checked stand-in."""

    _ALLOWED = {
        ("numpy", "ndarray"): _Array,
        ("numpy", "dtype"): _Dtype,
        ("_codecs", "encode"): _latin1_bytes,  # bytes in protocol-2 pickles
        ("builtins", "bytes"): _empty_bytes,  # empty bytes in protocol-2 pickles
        ("builtins", "tuple"): tuple,  # Paddle 2.x: a dygraph tensor is (name, array)
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "eval"): _eval_data_only,
        **_NUMPY_FUNCTIONS,
    }

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module  # Python 2 / protocol-2 names
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{shown(f'{module}.{name}')} is not allowed in a .pdparams file") from None


def read_pdparams(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
        scan(data, lambda name: name in ("_reconstruct", "dtype"))  # bounds on nesting and hashing, before building
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
        check_tree(obj, "the file")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable .pdparams file ({type(e).__name__}: "
                              f"{first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: a .pdparams file holds a dict of arrays, found {type(obj).__name__}")
    big = obj.pop("UnpackBigParamInfor@@", None)  # Paddle saves arrays over 2**30 - 1 bytes (~1 GiB) in slices
    out, copies = {}, {}
    for name, value in obj.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], _Array):
            value = value[1]
        if isinstance(value, _Array) and value.array is not None:  # one copy per array, however many names share it
            if id(value) not in copies:
                copies[id(value)] = (value, torch.from_numpy(value.array))
            out[str(name)] = copies[id(value)][1]
    if isinstance(big, dict):
        try:
            for name, info in big.items():
                parts = [out.pop(str(s)).flatten() for s in info["slices"]]
                out[str(name)] = torch.cat(parts).reshape(tuple(info["OriginShape"]))
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"{path}: a big array's slices do not add up ({type(e).__name__}: {e})") from None
    if not out:
        raise CheckpointError(f"{path}: no arrays found in this .pdparams file")
    return out


# --------------------------------------------------------------------------- persistables
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_tensor_desc(desc: bytes) -> tuple[int, list[int]]:
    """(data type enum, dims) of a serialised `VarType.TensorDesc`."""
    dtype, dims, pos = None, [], 0
    while pos < len(desc):
        tag, pos = _varint(desc, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(desc, pos)
            if field == 1:
                dtype = value
            elif field == 2:
                dims.append(_signed64(value))
        elif wire == 2:
            length, pos = _varint(desc, pos)
            chunk, pos = desc[pos:pos + length], pos + length
            if field == 2:  # packed dims
                p = 0
                while p < len(chunk):
                    value, p = _varint(chunk, p)
                    dims.append(_signed64(value))
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if dtype is None:
        raise ValueError("tensor description has no data type")
    return dtype, dims


def parse_lod_tensor(buf: bytes) -> torch.Tensor:
    """One serialised LoDTensor (the whole content of a persistable variable's file)."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(buf):
            raise ValueError(f"truncated: needs {pos + n} bytes, has {len(buf)}")
        out = buf[pos:pos + n]
        pos += n
        return out

    (version,) = struct.unpack("<I", take(4))
    if version != 0:
        raise ValueError(f"LoDTensor version {version} (only 0 exists)")
    (lod_level,) = struct.unpack("<Q", take(8))
    if lod_level > 16:
        raise ValueError(f"implausible LoD level {lod_level}")
    for _ in range(lod_level):
        (size,) = struct.unpack("<Q", take(8))
        take(size)
    (tversion,) = struct.unpack("<I", take(4))
    if tversion != 0:
        raise ValueError(f"tensor version {tversion} (only 0 exists)")
    (desc_size,) = struct.unpack("<i", take(4))
    if not 0 < desc_size < 4096:
        raise ValueError(f"implausible tensor description size {desc_size}")
    dtype_id, dims = parse_tensor_desc(take(desc_size))
    if dtype_id not in _PADDLE_DTYPES:
        raise ValueError(f"unsupported Paddle data type {dtype_id}")
    if any(d < 0 for d in dims):
        raise ValueError(f"unknown dimension in {dims}")
    dtype = _PADDLE_DTYPES[dtype_id]
    numel = math.prod(dims)  # Python ints: a product cannot wrap around
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    data = take(nbytes)
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} bytes after the tensor data")
    if numel == 0:
        return torch.empty(dims, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype).reshape(dims).clone()


def read_persistables(folder: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every variable file of a Paddle 1.x persistables folder. Returns (tensors, skipped files)."""
    folder = Path(folder)
    if (folder / "__params__").is_file() and not any(
            p.is_file() and p.name not in _SKIPPED_FILES for p in folder.iterdir()):
        raise CheckpointError(
            f"{folder}: parameters combined in one '__params__' file store no names; re-save them with "
            "fluid.io.save_persistables(exe, dirname) (one file per variable) or fluid.save (.pdparams)")
    out, skipped, bad = {}, [], []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.name in _SKIPPED_FILES or p.suffix in (".pdmodel", ".pdopt"):
            skipped.append(p.name)
            continue
        try:
            out[p.name] = parse_lod_tensor(p.read_bytes())
        except ValueError as e:
            bad.append(f"{p.name} ({e})")
    if bad:
        shown = ", ".join(bad[:6]) + (f", ... ({len(bad) - 6} more)" if len(bad) > 6 else "")
        raise CheckpointError(f"{folder}: {len(bad)} files are not Paddle tensors: {shown}")
    if not out:
        raise CheckpointError(f"{folder}: no Paddle variable files found")
    return out, skipped


def is_paddle_source(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() or p.suffix == ".pdparams"


def read_paddle(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A .pdparams file or a persistables folder. Returns (tensors by Paddle name, skipped files)."""
    p = Path(path)
    if p.is_dir():
        return read_persistables(p)
    return read_pdparams(p), []
