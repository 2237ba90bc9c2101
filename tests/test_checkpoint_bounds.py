"""Plain data in a checkpoint cannot crash, hang or exhaust a command: pickles written opcode by
opcode (a tuple nested 100,000 deep, tuples or lists that reuse each other through the memo,
a list that holds itself, state set on a tensor or on a dict) are refused in one line, fast."""
import pickle
import struct
import time

import pytest
import torch

from tpn.checkpoint import CheckpointError, load_file
from tpn.config import ConfigError, load_config, to_dict
from tpn.models.build import build_model
from tpn.pickle_scan import MAX_DEPTH, check_tree, scan

PROTO = b"\x80\x02"


def legacy_file(path, obj_pickle: bytes):
    """torch's legacy layout around one hand-written object pickle, with no storages."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    path.write_bytes(head + obj_pickle + pickle.dumps([], protocol=2))
    return path


def text(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE


def deep_tuple_key(n: int) -> bytes:  # {((((),),),...): None}
    return PROTO + b"}" + b")" + b"\x85" * n + b"Ns."


def dag(levels: int, tuples: bool) -> bytes:
    """x[i+1] = (x[i], x[i]) (or a list of the two): `levels` x 8 bytes, 2**levels objects expanded."""
    out = b")q\x00" if tuples else b"]q\x00"
    for i in range(levels):  # POP, then x[i+1] from two references to x[i] in the memo
        pair = b"h" + bytes([i]) + b"h" + bytes([i])
        out += b"0" + (pair + b"\x86" if tuples else b"(" + pair + b"l") + b"q" + bytes([i + 1])
    return out


@pytest.mark.parametrize("name, body", [
    ("a tuple key 100,000 deep", deep_tuple_key(100_000)[2:-1]),
    ("a tuple key of 2**60 objects", b"}" + dag(60, tuples=True) + b"Ns"),
    ("a config of 2**60 objects", b"}" + text("config") + dag(60, tuples=False) + b"s"),
    ("a list that holds itself", b"]q\x00h\x00a"),
    ("a list 100,000 deep", b"]" * 100_001 + b"a" * 100_000),
    ("state set on a tensor", b"ctorch._utils\n_rebuild_tensor_v2\n)R}b"),
    ("an attribute set on a dict", b"ccollections\nOrderedDict\n)R}" + text("items") + b"K\x01sb"),
    ("one tuple of 2**19 objects hashed 20 times", b"}" + dag(18, tuples=True) + b"0(" + b"h\x12N" * 20 + b"u"),
    ("set items added to a list", b"](K\x01\x90"),
    ("an OrderedDict built from arguments", b"ccollections\nOrderedDict\n(]tR"),
    ("state set on a function", b"ctorch._utils\n_rebuild_tensor_v2\n}b"),
])
def test_hostile_plain_data_is_refused_in_one_line(name, body, tmp_path):
    path = legacy_file(tmp_path / "x.pth", PROTO + body + b".")
    t = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        load_file(path)
    assert time.perf_counter() - t < 20, name  # a hash or walk over 2**60 objects would never end
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "refused" in msg and len(msg) < 400, (name, msg)


def test_ordinary_nesting_and_sharing_still_load(tmp_path):
    """What torch.save writes for a training checkpoint: shared tensors, a state_dict with its
    `_metadata`, tuple keys, nested dicts a few levels deep."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = model.state_dict()
    shared = torch.ones(5)
    obj = {"state_dict": sd, "a": shared, "b": shared[1:], "keys": {(1, (2, 3)): [[[{"x": 1}]]]},
           "deep": [[[[[[[[[[1]]]]]]]]]], "same": [sd, sd]}
    for legacy in (False, True):
        torch.save(obj, tmp_path / "ok.pth", _use_new_zipfile_serialization=not legacy)
        got, skipped = load_file(tmp_path / "ok.pth")
        assert skipped == [] and got["keys"] == obj["keys"] and got["state_dict"]._metadata == sd._metadata
        assert got["b"].untyped_storage().data_ptr() == got["a"].untyped_storage().data_ptr()


def test_the_bounds_themselves():
    scan(PROTO + b"}" + dag(18, tuples=True) + b"Ns.")  # 2**19 - 1 objects: within MAX_EXPANDED
    with pytest.raises(pickle.UnpicklingError, match="1048575 objects"):
        scan(PROTO + b"}" + dag(19, tuples=True) + b"Ns.")
    nested = [1]
    for _ in range(MAX_DEPTH - 1):
        nested = [nested]
    check_tree(nested)
    with pytest.raises(pickle.UnpicklingError, match="deep"):
        check_tree([nested])
    x = [1, 2]
    for _ in range(17):
        x = [x, x]
    check_tree(x)  # 2**19 - 1 objects expanded, 18 distinct lists: each visited once
    with pytest.raises(pickle.UnpicklingError, match="objects when expanded"):
        check_tree([x, x])


def test_a_saved_config_that_does_not_fit_its_weights_builds_nothing(tmp_path):
    """`tpn predict --checkpoint F` without --config builds the model F's config describes: a
    config edited to a billion classes is refused before any allocation."""
    from tpn.engine.predict import checkpoint_config

    cfg = load_config("tpn_tiny_synth")
    saved = to_dict(cfg)
    saved["model"]["head"]["num_classes"] = 10**9
    torch.save({"format": "tpn", "state_dict": build_model(cfg).state_dict(), "config": saved}, tmp_path / "c.pth")
    with pytest.raises(ConfigError, match="its saved config does not fit its own weights .*1000000000"):
        checkpoint_config(tmp_path / "c.pth")
    saved["model"]["head"]["num_classes"] = cfg.model.head.num_classes
    torch.save({"format": "tpn", "state_dict": build_model(cfg).state_dict(), "config": saved}, tmp_path / "c.pth")
    assert checkpoint_config(tmp_path / "c.pth").model.head.num_classes == cfg.model.head.num_classes


def test_bytes_changed_on_disk_are_caught_by_the_records_crc(tmp_path):
    """torch's archive reader does not check CRC-32s: a flipped byte inside a tensor would load as
    other weights. Each record read is checked against its zip directory entry."""
    marker = torch.full((64,), 1.2345, dtype=torch.float32)
    torch.save({"state_dict": {"w": marker}}, tmp_path / "ok.pth")
    data = bytearray((tmp_path / "ok.pth").read_bytes())
    at = bytes(data).index(marker.numpy().tobytes())
    data[at + 17] ^= 0x40
    (tmp_path / "bad.pth").write_bytes(bytes(data))
    assert torch.equal(load_file(tmp_path / "ok.pth")[0]["state_dict"]["w"], marker)
    with pytest.raises(CheckpointError, match=r"bad.pth: damaged checkpoint \(data/0 fails its CRC-32 check"):
        load_file(tmp_path / "bad.pth")


def test_a_tensor_cannot_claim_more_values_than_it_stores_nor_an_unread_dtype(tmp_path):
    """A stride-0 view of one stored value as 10**8 values (anything that walks it would allocate
    for all of them) and dtypes that are not numbers tpn reads are refused."""
    torch.save({"w": torch.ones(1).expand(10**8)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="a tensor of shape \\(100000000,\\)"):
        load_file(tmp_path / "x.pth")
    torch.save({"w": torch.zeros(4, dtype=torch.float8_e4m3fn)}, tmp_path / "f8.pth")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):  # its storage type is refused first
        load_file(tmp_path / "f8.pth")
    from tpn.checkpoint import _Storage, _tensor

    with pytest.raises(pickle.UnpicklingError, match="dtype torch.float8_e4m3fn, which tpn does not read"):
        _tensor(_Storage(torch.zeros(4, dtype=torch.uint8).untyped_storage(), torch.uint8), 0, (4,), (1,),
                torch.float8_e4m3fn)


def test_pdparams_bounds(tmp_path):
    """The .pdparams reader gets the same bounds: `tuple(...)` results as dict keys, state set on
    its own functions, messages that would print file data in full."""
    from tpn.convert.paddle import read_pdparams

    for name, body in (("tuple() of a list as a key", b"}" + b"c__builtin__\ntuple\n(]tR" + b"Ns"),
                       ("state on a function", b"cbuiltins\neval\n}b")):
        (tmp_path / "p.pdparams").write_bytes(PROTO + body + b".")
        with pytest.raises(CheckpointError, match="refused") as e:
            read_pdparams(tmp_path / "p.pdparams")
        assert "\n" not in str(e.value), name
