"""No code runs from a checkpoint: hostile pickles at every pickle position of torch's legacy
layout, in a zip's data.pkl, inside `meta`, as the whole object, in a Paddle .pdparams file,
plus TorchScript and tar archives, each driven through every command that reads weights.
Each payload writes a marker file when unpickled; the marker must never appear."""
import io
import logging
import os
import pickle
import pickletools
import shutil
import tarfile
import warnings

import numpy as np
import pytest
import torch

import tpn
from tests.test_engine_common import TINY, cli, data_overrides
from tpn.checkpoint import CheckpointError, load_file
from tpn.cli import main
from tpn.config import dump_config, load_config
from tpn.convert.paddle import read_pdparams
from tpn.models.build import build_model


class Touch:
    """Unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class Passthrough:
    """Unpickling it writes the marker, then yields `value`: the value the reader expects at
    that position, so an unrestricted load carries on and returns the real checkpoint."""

    def __init__(self, marker, value):
        self.marker, self.value = marker, value

    def __reduce__(self):
        return eval, (f"(open({str(self.marker)!r}, 'w').close(), {self.value!r})[1]",)


def legacy_pickles(data: bytes) -> list[bytes]:
    """torch's legacy layout: magic number, protocol, sys_info, the object, the storage keys
    (five pickles), then the raw storages; returns the five pickles and the rest."""
    f, parts, start = io.BytesIO(data), [], 0
    for _ in range(5):
        for _op in pickletools.genops(f):  # reads opcodes only, up to STOP: runs nothing
            pass
        parts.append(data[start:f.tell()])
        start = f.tell()
    return parts + [data[start:]]


def saved(obj, legacy=False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


# name -> inert: True where the payload sits in a foreign checkpoint's `meta`, which loads (its
# objects become placeholders) and predicts normally; False where the file must be refused
PAYLOADS = {
    "legacy_magic_system": False, "legacy_magic": False, "legacy_protocol": False, "legacy_sys_info": False,
    "legacy_storage_keys": False, "legacy_whole": False, "legacy_meta": True,
    "zip_whole": False, "zip_label_names": False, "zip_meta": True, "zip_state_dict_key": True,
    "pdparams_whole": False, "pdparams_entry": False, "torchscript": False, "tar": False,
}
POSITION = {"legacy_magic": 0, "legacy_protocol": 1, "legacy_sys_info": 2, "legacy_storage_keys": 4}


def write_payload(name: str, path, marker, sd: dict) -> None:
    tpn_ckpt = {"format": "tpn", "state_dict": sd, "label_names": ["a", "b"]}
    if name in POSITION:
        parts = legacy_pickles(saved(tpn_ckpt, legacy=True))
        i = POSITION[name]
        real = pickle.loads(parts[i])  # our own file's header value, so the payload can return it
        parts[i] = pickle.dumps(Passthrough(marker, real), protocol=2)
        data = b"".join(parts)
    elif name == "legacy_magic_system":
        parts = legacy_pickles(saved(tpn_ckpt, legacy=True))
        data = pickle.dumps(Touch(marker), protocol=2) + b"".join(parts[1:])
    elif name in ("legacy_whole", "zip_whole"):
        data = saved(Touch(marker), legacy=name.startswith("legacy"))
    elif name in ("legacy_meta", "zip_meta"):
        # mmengine's layout: {"state_dict", "meta"}, with objects of its own classes in `meta`
        data = saved({"state_dict": sd, "meta": {"hook": Touch(marker)}}, legacy=name == "legacy_meta")
    elif name == "zip_state_dict_key":  # an object as a key among the weights: dropped, the rest loads
        data = saved({"state_dict": {**sd, Touch(marker): torch.zeros(1)}})
    elif name == "zip_label_names":
        data = saved({**tpn_ckpt, "label_names": Passthrough(marker, ["a", "b"])})
    elif name == "pdparams_whole":
        data = pickle.dumps(Touch(marker), protocol=2)
    elif name == "pdparams_entry":
        data = pickle.dumps({"conv1_weights": np.zeros((2, 3), np.float32), "x": Passthrough(marker, 1)}, protocol=2)
    elif name == "torchscript":
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, its files live on
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
        data = buf.getvalue()
    elif name == "tar":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:") as tar:
            for member in ("storages", "tensors", "pickle"):
                body = pickle.dumps(Touch(marker), protocol=2)
                info = tarfile.TarInfo(member)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        data = buf.getvalue()
    path.write_bytes(data)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Two real mp4s (validation only: the train list is empty), a tiny config as YAML and the
    weights of its model, which every payload file carries."""
    from tpn.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("safety")
    data = root / "data"
    generate_dataset(data, classes=2, videos_per_class=1, size=(64, 48), frames=24, seed=0, workers=1,
                     val_fraction=1.0)
    cfg = load_config("tpn_tiny_synth", TINY + data_overrides(data, 2) + ["data.num_workers=0"])
    yaml = root / "tiny.yaml"
    yaml.write_text(dump_config(cfg))
    return {"yaml": str(yaml), "video": str(next((data / "videos").rglob("*.mp4"))), "sd": build_model(cfg).state_dict()}


def payload_file(name: str, folder, kit):
    """(path, marker): the payload `name` written under `folder`, with its own marker path."""
    path = folder / (f"{name}.pdparams" if name.startswith("pdparams") else f"{name}.pth")
    marker = folder / f"{name}.MARKER"
    write_payload(name, path, marker, kit["sd"])
    return path, marker


def run_cli(args, capsys) -> tuple[int, str, str]:
    log = logging.getLogger("tpn")
    before = list(log.handlers)
    try:
        code = main([str(a) for a in args])
    finally:  # `tpn train` adds log handlers (stderr, train.log) to the process: drop them
        for h in [h for h in log.handlers if h not in before]:
            log.removeHandler(h)
            h.close()
    out, err = capsys.readouterr()
    return code, out, err


def entry(name, path, kit, tmp_path, capsys):
    """Drive `path` through one entry point; returns (exit code, stdout, stderr)."""
    y = kit["yaml"]
    if name == "load_model":
        try:
            model = tpn.load_model(y, path)
        except CheckpointError as e:
            return 2, "", f"tpn: error: {e}\n"
        assert torch.equal(model.head.fc.weight, kit["sd"]["head.fc.weight"])
        return 0, "", ""
    if name == "convert":
        return run_cli(["convert", path, tmp_path / "out.pth", "--config", y], capsys)
    if name == "test":
        return run_cli(["test", y, "--checkpoint", path, "--views", "1x1", "--device", "cpu",
                        "--work-dir", tmp_path / "test"], capsys)
    if name == "predict":
        return run_cli(["predict", kit["video"], "--config", y, "--checkpoint", path, "--views", "1x1",
                        "--device", "cpu"], capsys)
    if name == "export":
        return run_cli(["export", y, tmp_path / "m.onnx", "--checkpoint", path], capsys)
    if name == "resume_path":
        return run_cli(["train", y, "--work-dir", tmp_path / "w", "--resume", path, "--device", "cpu"], capsys)
    if name == "resume_auto":  # planted as the newest epoch checkpoint of the work dir
        work = tmp_path / "w"
        work.mkdir()
        shutil.copy(path, work / "epoch_0001.pth")
        code, out, err = run_cli(["train", y, "--work-dir", work, "--resume", "auto", "--device", "cpu"], capsys)
        return code, out, err + (work / "train.log").read_text()
    if name == "pretrained2d":  # read where training starts from scratch (the validation videos as its list)
        val_list = load_config(y).data.val_list
        return run_cli(["train", y, "--work-dir", tmp_path / "w", "--device", "cpu",
                        "--set", f"model.backbone.pretrained2d={path}", "--set", f"data.train_list={val_list}",
                        "--set", "train.batch_size=2"], capsys)
    raise AssertionError(name)


ENTRIES = ["load_model", "convert", "test", "predict", "export", "resume_path", "resume_auto", "pretrained2d"]


@pytest.mark.parametrize("entry_point", ENTRIES)
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_no_entry_point_runs_code_from_a_file(payload, entry_point, kit, tmp_path, capsys):
    inert = PAYLOADS[payload]
    path, marker = payload_file(payload, tmp_path, kit)
    code, out, err = entry(entry_point, path, kit, tmp_path, capsys)
    assert not marker.exists(), f"{payload} ran code through {entry_point}"
    if entry_point == "resume_auto":  # the planted file is skipped with a warning naming it
        assert "ignoring unreadable checkpoint" in err and "epoch_0001.pth" in err, err
        # then the run stops before any training: the dir's only checkpoint is not one to resume
        assert "holds checkpoints of an earlier run (epoch_0001.pth) but none that --resume auto continues" in err
    elif inert and entry_point in ("load_model", "convert", "test", "predict", "export"):
        assert code == 0, err
        if entry_point == "predict":
            assert out.splitlines()[0] == kit["video"] and len(out.splitlines()) == 3  # video + 2 classes
        if entry_point == "convert":
            assert "skipped non-tensor objects: posix.system" in out, out
    else:
        assert code == 2, err
        assert err.strip().count("\n") == 0 and err.startswith("tpn: error: ") and path.name in err, err


def test_payloads_are_live(kit, tmp_path):
    """The test above has teeth: torch's unrestricted reader runs each torch-layout payload, and
    a legacy header payload then returns the real checkpoint."""
    for name in ["legacy_magic", "legacy_protocol", "legacy_sys_info", "legacy_storage_keys", "zip_label_names"]:
        path, marker = payload_file(name, tmp_path, kit)
        obj = torch.load(path, weights_only=False)
        assert marker.exists()
        assert torch.equal(obj["state_dict"]["head.fc.weight"], kit["sd"]["head.fc.weight"])
    path, marker = payload_file("pdparams_entry", tmp_path, kit)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_refusals_name_what_the_file_calls(kit, tmp_path):
    files = {name: payload_file(name, tmp_path, kit)[0] for name in PAYLOADS}
    with pytest.raises(CheckpointError, match=r"legacy_magic\.pth: not a readable checkpoint \(RuntimeError: "
                       r"Invalid magic number.*it names __builtin__\.eval, which tpn never runs"):
        load_file(files["legacy_magic"])
    with pytest.raises(CheckpointError, match=r"zip_label_names\.pth: a tpn checkpoint holds only tensors .* "
                       r"names __builtin__\.eval \(never run\)"):
        load_file(files["zip_label_names"])
    with pytest.raises(CheckpointError, match="TorchScript archive holds code"):
        load_file(files["torchscript"])
    with pytest.raises(CheckpointError, match="a tar archive"):
        load_file(files["tar"])
    obj, skipped = load_file(files["legacy_meta"])  # foreign meta: inert placeholder, weights intact
    assert skipped == ["posix.system"] and "unreadable posix.system" in repr(obj["meta"]["hook"])
    with pytest.raises(CheckpointError, match="legacy_meta.pth: a tpn checkpoint holds only"):
        load_file(files["legacy_meta"], foreign=False)
    assert not list(tmp_path.glob("*.MARKER"))


def test_a_pickle_cannot_retouch_torchs_functions(kit, tmp_path):
    """BUILD on a loaded global sets attributes on it: our readers get a fresh copy each time,
    so torch's own `_rebuild_tensor_v2` keeps its defaults."""
    before = torch._utils._rebuild_tensor_v2.__defaults__
    tamper = b"ctorch._utils\n_rebuild_tensor_v2\n(N}(V__defaults__\n(I7\ntutb."  # BUILD (None, {...})
    parts = legacy_pickles(saved({"format": "tpn", "state_dict": kit["sd"]}, legacy=True))
    path = tmp_path / "tamper.pth"
    path.write_bytes(tamper + b"".join(parts[1:]))
    try:
        with pytest.raises(CheckpointError, match="tamper.pth: not a readable checkpoint"):
            load_file(path)
        assert torch._utils._rebuild_tensor_v2.__defaults__ == before
    finally:
        torch._utils._rebuild_tensor_v2.__defaults__ = before


def test_ordinary_checkpoints_still_load(kit, tmp_path):
    sd = kit["sd"]
    for legacy in (False, True):
        path = tmp_path / "code.pth"  # the zip's top folder is named after the file: not TorchScript's code/
        torch.save({"format": "tpn", "state_dict": sd, "label_names": ["a", "b"]}, path,
                   _use_new_zipfile_serialization=not legacy)
        obj, skipped = load_file(path, foreign=False)
        assert skipped == [] and obj["label_names"] == ["a", "b"]
        assert all(torch.equal(obj["state_dict"][k], v) for k, v in sd.items())
        torch.save(torch.nn.Parameter(torch.ones(2)), path, _use_new_zipfile_serialization=not legacy)
        obj, _ = load_file(path)
        assert isinstance(obj, torch.nn.Parameter) and obj.requires_grad


def test_every_file_read_in_src_goes_through_the_safe_readers():
    """torch.load and unpicklers appear only in tpn.checkpoint.load_file and the .pdparams
    reader, and the stdlib's unrestricted pickle.load / pickle.loads nowhere."""
    from pathlib import Path

    src = Path(tpn.__file__).parent
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text, path
        for needle in ("torch.load(", "Unpickler", "allow_pickle", "jit.load("):
            allowed = path.relative_to(src).as_posix() in ("checkpoint.py", "convert/paddle.py")
            assert needle not in text or allowed, f"{path}: {needle}"


class ForgedDtype:
    """A structured dtype whose object field is hidden by forged flags: numpy's own
    `__setstate__` would accept it, and an array of it reads raw bytes as object pointers."""

    def __reduce__(self):
        return np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0)


class ForgedArray:
    def __reduce__(self):
        reconstruct, args, _state = np.zeros(1).__reduce__()
        return reconstruct, args, (1, (1,), ForgedDtype(), False, b"\x41" * 8)


def test_a_forged_numpy_dtype_in_pdparams_is_refused(tmp_path):
    """In a child process: with numpy's own reconstruction this file crashes the interpreter."""
    path = tmp_path / "forged.pdparams"
    path.write_bytes(pickle.dumps({"conv1_weights": ForgedArray()}, protocol=2))
    r = cli("convert", str(path), str(tmp_path / "out.pth"))
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.strip() == (f"tpn: error: {path}: not a readable .pdparams file "
                                "(UnpicklingError: numpy dtype 'V8' is not allowed in a .pdparams file)")


def test_a_damaged_big_array_table_is_a_one_line_error(tmp_path):
    path = tmp_path / "big.pdparams"
    path.write_bytes(pickle.dumps({"w@@.0": np.ones(3, np.float32),
                                   "UnpackBigParamInfor@@": {"w": {"OriginShape": (2, 3), "slices": ["w@@.0", "w@@.1"]}}}))
    with pytest.raises(CheckpointError, match=r"big.pdparams: a big array's slices do not add up \(KeyError: 'w@@.1'\)"):
        read_pdparams(path)


@pytest.mark.parametrize("bad", [{"label_names": 5}, {"label_names": ["a", 2]}, {"state_dict": [1, 2]}])
def test_a_tpn_checkpoint_of_the_wrong_shape_is_a_one_line_error(bad, kit, tmp_path, capsys):
    path = tmp_path / "odd.pth"
    torch.save({"format": "tpn", "state_dict": kit["sd"], **bad}, path)
    code, _, err = entry("predict", path, kit, tmp_path, capsys)
    assert code == 2 and err.strip() == (f"tpn: error: {path}: a damaged tpn checkpoint (its state_dict must be a "
                                         "dict and its label_names a list of strings)")
