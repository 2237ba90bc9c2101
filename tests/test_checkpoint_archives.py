"""Crafted archives and allocation bombs: a checkpoint is what torch's own archive reader sees
(not Python's `zipfile`), it never reaches TorchScript or torch.load, and it cannot make us
allocate more than the file holds.

Reaching torch.load or TorchScript at all counts as running code here: both are replaced by
functions that write the marker, so every entry point is checked for the path, not only for
one payload's effect."""
import collections
import io
import os
import pickle
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch

from tests.test_checkpoint_safety import ENTRIES, Touch, entry, kit, legacy_pickles, saved  # noqa: F401 (fixture)
from tpn.checkpoint import CheckpointError, load_file
from tpn.convert.paddle import read_pdparams


def torchscript_bytes() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def end_record(data: bytes) -> tuple[int, int, int]:
    """(position of the end record, central directory size, its offset) of a zip without a comment."""
    pos = data.rfind(b"PK\x05\x06")
    _sig, _d, _dc, _n1, _n2, size, offset, _comment = struct.unpack("<4s4H2LH", data[pos:pos + 22])
    return pos, size, offset


def hide_code(records: bytes) -> bytes:
    """The same names with TorchScript's markers renamed (same lengths, so offsets stay valid)."""
    return records.replace(b"/code/", b"/c0de/").replace(b"constants.pkl", b"c0nstants.pkl")


def two_directories(ts: bytes) -> bytes:
    """A decoy central directory just before the end record: Python's zipfile reads it (it
    locates the directory from the end record's position), torch's reader follows the end
    record's offset to the real one."""
    pos, size, offset = end_record(ts)
    return ts[:pos] + hide_code(ts[offset:offset + size]) + ts[pos:]


def renamed_local_headers(ts: bytes) -> bytes:
    """Local headers renamed, the central directory (what both readers list) intact."""
    pos, size, offset = end_record(ts)
    return hide_code(ts[:offset]) + ts[offset:]


def renamed_directory(ts: bytes) -> bytes:
    """The central directory renamed, the local headers intact: neither reader lists code/."""
    pos, size, offset = end_record(ts)
    return ts[:offset] + hide_code(ts[offset:offset + size]) + ts[offset + size:]


def duplicate_names(sd) -> bytes:
    """A torch.save archive with a second `data.pkl` that fires when unpickled."""
    good = saved({"format": "tpn", "state_dict": sd, "label_names": ["a", "b"]})
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name
        with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, src.read(info))
                if info.filename.endswith("/data.pkl"):
                    dst.writestr(info, pickle.dumps(Touch(MARKER[0]), protocol=2))
    return out.getvalue()


MARKER = [None]  # the current test's marker path, for payloads built inside helpers
CRAFTED = ["two_directories", "renamed_local_headers", "renamed_directory", "duplicate_names"]


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """The marker file, and torch.load / TorchScript loading replaced by writers of it."""
    path = tmp_path / "ran.MARKER"
    MARKER[0] = path

    def reached(*args, **kwargs):
        path.write_text("reached")
        raise RuntimeError("reached a loader that executes")

    monkeypatch.setattr(torch, "load", reached)
    monkeypatch.setattr(torch.jit, "load", reached)
    monkeypatch.setattr(torch._C, "import_ir_module", reached)
    monkeypatch.setattr(torch._C, "import_ir_module_from_buffer", reached)
    return path


def crafted(name: str, kit) -> bytes:
    if name == "duplicate_names":
        return duplicate_names(kit["sd"])
    return {"two_directories": two_directories, "renamed_local_headers": renamed_local_headers,
            "renamed_directory": renamed_directory}[name](torchscript_bytes())


def test_the_decoy_directory_hides_torchscript_from_zipfile_only(tmp_path):
    """The crafted file does what the attack needs: zipfile lists no TorchScript, torch's reader does
    (so torch.load would hand it to torch.jit.load)."""
    data = two_directories(torchscript_bytes())
    assert not any("constants.pkl" in n or "/code/" in n for n in zipfile.ZipFile(io.BytesIO(data)).namelist())
    records = torch._C.PyTorchFileReader(io.BytesIO(data)).get_all_records()
    assert "constants.pkl" in records and any(r.startswith("code/") for r in records)
    path = tmp_path / "two.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"two\.pth: a TorchScript archive holds code"):
        load_file(path)


@pytest.mark.parametrize("entry_point", ENTRIES)
@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_archives_reach_no_code_through_any_entry_point(name, entry_point, kit, marker, tmp_path, capsys):
    path = tmp_path / f"{name}.pth"
    path.write_bytes(crafted(name, kit))
    code, out, err = entry(entry_point, path, kit, tmp_path, capsys)
    assert not marker.exists(), f"{name} reached code through {entry_point}"
    if entry_point == "resume_auto":
        assert "ignoring unreadable checkpoint" in err and "epoch_0001.pth" in err, err
    else:
        assert code == 2, err
        assert err.strip().count("\n") == 0 and err.startswith("tpn: error: ") and path.name in err, err


def test_ordinary_checkpoints_load_without_torch_load(kit, marker, tmp_path):
    """The reader does not lean on torch.load for either layout (it is replaced by the marker writer)."""
    for legacy in (False, True):
        path = tmp_path / f"plain_{legacy}.pth"
        path.write_bytes(saved({"format": "tpn", "state_dict": kit["sd"], "label_names": ["a", "b"],
                                "half": torch.arange(6, dtype=torch.float16).view(2, 3).t(),
                                "view": torch.arange(10)[2:7], "p": torch.nn.Parameter(torch.ones(3))},
                               legacy=legacy))
        obj, skipped = load_file(path, foreign=False)
        assert skipped == [] and not marker.exists()
        assert all(torch.equal(obj["state_dict"][k], v) for k, v in kit["sd"].items())
        assert torch.equal(obj["half"], torch.arange(6, dtype=torch.float16).view(2, 3).t())
        assert torch.equal(obj["view"], torch.arange(2, 7)) and obj["p"].requires_grad


# --- allocation bombs -------------------------------------------------------------------------

class HugeView:
    """Pickles as a tensor over a real, small storage with a declared shape far beyond it."""

    def __init__(self, size, stride):
        self.storage, self.size, self.stride = torch.zeros(4).untyped_storage(), size, stride

    def __reduce__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            typed = torch.storage.TypedStorage(wrap_storage=self.storage, dtype=torch.float32, _internal=True)
        return torch._utils._rebuild_tensor_v2, (typed, 0, self.size, self.stride, False, collections.OrderedDict())


def deflate_bomb(sd) -> bytes:
    """A valid torch.save archive whose first storage record is 1 GiB of zeros, deflated to ~4.5 MB (5.5 MB with the weights)."""
    good = saved({"format": "tpn", "state_dict": sd})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as dst:
        for info in src.infolist():
            if info.filename.endswith("/data/0"):
                with dst.open(info.filename, "w", force_zip64=True) as f:
                    for _ in range(64):
                        f.write(bytes(1 << 24))
            else:
                dst.writestr(info.filename, src.read(info))
    return out.getvalue()


class _DeclaringPickler(pickle.Pickler):
    """Writes a storage persistent id declaring `numel` elements for the placeholder `STORAGE`."""

    def __init__(self, f, pid):
        super().__init__(f, protocol=2)
        self.pid = pid

    def persistent_id(self, obj):
        return self.pid if obj is STORAGE else None


STORAGE = object()


class DeclaredTensor:
    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (STORAGE, 0, (4,), (1,), False, collections.OrderedDict())


def legacy_storage_bomb() -> bytes:
    """A legacy-layout file whose one storage declares 2**40 floats (4 TiB)."""
    header = legacy_pickles(saved({"x": torch.zeros(1)}, legacy=True))[:3]
    buf = io.BytesIO()
    _DeclaringPickler(buf, ("storage", torch.FloatStorage, "0", "cpu", 2 ** 40, None)).dump({"x": DeclaredTensor()})
    return b"".join(header) + buf.getvalue() + pickle.dumps(["0"], protocol=2) + (4).to_bytes(8, "little") + bytes(16)


def zip_declared_bomb() -> bytes:
    """A zip-layout file whose data.pkl declares 2**40 floats for its 4-byte storage record."""
    good = saved({"x": torch.zeros(1)})
    buf = io.BytesIO()
    _DeclaringPickler(buf, ("storage", torch.FloatStorage, "0", "cpu", 2 ** 40)).dump({"x": DeclaredTensor()})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, buf.getvalue() if info.filename.endswith("/data.pkl") else src.read(info))
    return out.getvalue()


BOMBS = {
    "deflate": (lambda sd: deflate_bomb(sd), r"data/0 declares 1073741824 bytes, more than the file holds"
                # torch 2.11's reader (no record sizes): tpn reads the records itself, uncompressed ones only
                if not os.environ.get("TPN_TEST_READER_WITHOUT_RECORD_SIZE") else r"is a compressed zip record"),
    "legacy_storage": (lambda sd: legacy_storage_bomb(), r"storage 0 declares 4398046511104 bytes, more than"),
    "zip_declared": (lambda sd: zip_declared_bomb(), r"data/0 holds 4 bytes, its tensor declares 4398046511104"),
    "huge_shape": (lambda sd: saved({"w": HugeView((2 ** 31, 2 ** 31), (1, 1))}), r"reaches element 4294967294 "),
    "overflowing_shape": (lambda sd: saved({"w": HugeView((2 ** 62, 2 ** 62), (2 ** 62, 1))}), r"reaches element"),
    "negative_stride": (lambda sd: saved({"w": HugeView((4,), (-1,))}), r"invalid shape"),
    "legacy_huge_shape": (lambda sd: saved({"w": HugeView((2 ** 40,), (1,))}, legacy=True), r"reaches element"),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_small_file_cannot_make_us_allocate_more_than_it_holds(bomb, kit, tmp_path, capsys):
    make, why = BOMBS[bomb]
    path = tmp_path / f"{bomb}.pth"
    path.write_bytes(make(kit["sd"]))
    assert path.stat().st_size < 8_000_000
    with pytest.raises(CheckpointError, match=why) as info:
        load_file(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    code, _, err = entry("convert", path, kit, tmp_path, capsys)  # and one line from the CLI
    assert code == 2 and err.strip().count("\n") == 0 and path.name in err, err


class Encode:
    def __init__(self, inner, codec):
        self.inner, self.codec = inner, codec

    def __reduce__(self):
        import codecs
        return codecs.encode, (self.inner, self.codec)


class Bytes:
    def __reduce__(self):
        return bytes, (2 ** 34,)


def test_pdparams_codec_and_bytes_bombs_are_refused(tmp_path):
    """protocol 2 spells bytes as `_codecs.encode(text, 'latin1')` and b'' as `bytes()`: a hex codec
    nested 30 times (a 64 KiB string would become 64 TiB) or bytes(2**34) is refused."""
    nested = "a" * 65536
    for _ in range(30):
        nested = Encode(nested, "hex")
    for name, payload in (("codec", nested), ("bytes", Bytes())):
        path = tmp_path / f"{name}.pdparams"
        path.write_bytes(pickle.dumps({"conv1_weights": np.zeros(2, np.float32), "x": payload}, protocol=2))
        with pytest.raises(CheckpointError, match=rf"{name}\.pdparams: not a readable .pdparams file \(UnpicklingError"):
            read_pdparams(path)
    path = tmp_path / "latin1.pdparams"  # the ordinary spelling still loads
    path.write_bytes(pickle.dumps({"conv1_weights": np.arange(3, dtype=np.float32), "b": b"", "c": b"\x00\xff"},
                                  protocol=2))
    assert torch.equal(read_pdparams(path)["conv1_weights"], torch.arange(3, dtype=torch.float32))
