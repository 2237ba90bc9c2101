"""Paddle weights read without Paddle: LoDTensor files, persistables folders, .pdparams pickles."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from tpn.checkpoint import CheckpointError
from tpn.config import load_config
from tpn.convert.weights import convert_checkpoint, load_model, load_weights
from tpn.convert.paddle import parse_lod_tensor, read_pdparams, read_persistables
from tpn.models.build import build_model

TINY_YAML = ("model:\n  backbone: {base_channels: 8, stage_blocks: [1, 1, 1, 1]}\n"
             "  neck: {out_channels: 64, groups: 8}\n  head: {num_classes: 10}\n")
DTYPE_IDS = {np.dtype("float32"): 5, np.dtype("float64"): 6, np.dtype("int64"): 3, np.dtype("int32"): 2}


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = b""
    while True:
        b, v = v & 0x7F, v >> 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def write_lod_tensor(path, array: np.ndarray, lod=()):
    """One variable as Paddle 1.x `save_persistables` writes it (lod_tensor.cc / tensor_util.cc)."""
    array = np.ascontiguousarray(array)
    desc = b"\x08" + _varint(DTYPE_IDS[array.dtype]) + b"".join(b"\x10" + _varint(d) for d in array.shape)
    buf = struct.pack("<IQ", 0, len(lod))
    for level in lod:
        buf += struct.pack("<Q", 8 * len(level)) + struct.pack(f"<{len(level)}Q", *level)
    buf += struct.pack("<Ii", 0, len(desc)) + desc + array.astype(array.dtype.newbyteorder("<")).tobytes()
    with open(path, "wb") as f:
        f.write(buf)


def test_lod_tensor_bytes_spelled_out():
    data = np.arange(6, dtype="<f4")
    buf = (b"\x00\x00\x00\x00" + b"\x00" * 8  # version 0, lod_level 0
           + b"\x00\x00\x00\x00" + b"\x06\x00\x00\x00"  # tensor version 0, desc of 6 bytes
           + b"\x08\x05" + b"\x10\x02" + b"\x10\x03"  # FP32, dims 2, 3
           + data.tobytes())
    t = parse_lod_tensor(buf)
    assert t.dtype == torch.float32 and t.shape == (2, 3)
    assert torch.equal(t, torch.arange(6, dtype=torch.float32).reshape(2, 3))
    # packed dims, one LoD level, int64
    ints = np.array([7, -1], dtype="<i8")
    buf = (struct.pack("<IQ", 0, 1) + struct.pack("<Q", 16) + struct.pack("<2Q", 0, 2)
           + struct.pack("<Ii", 0, 5) + b"\x08\x03" + b"\x12\x01\x02" + ints.tobytes())
    assert parse_lod_tensor(buf).tolist() == [7, -1]
    with pytest.raises(ValueError, match="truncated"):
        parse_lod_tensor(buf[:-3])
    with pytest.raises(ValueError, match="bytes after"):
        parse_lod_tensor(buf + b"\x00")


def tpn_to_paddle_names(sd: dict) -> dict:
    """tpn's state_dict under the names of the seed's Paddle model (TSN3D.py, TPN.py, backbone.py)."""
    bn = {"weight": "scale", "bias": "offset", "running_mean": "mean", "running_var": "variance"}
    convs = {"conv1": "2a", "conv2": "2b", "conv3": "2c", "downsample": "1"}
    neck = {"neck.spatial.0.0": "SpatialModulation", "neck.pyramid_fusion": "pyramid_fusion",
            "neck.top_down_fusion.branches.0": "level_fusion_topdown_downout",
            "neck.top_down_fusion.branches.1": "level_fusion_topdown_topout",
            "neck.top_down_fusion.fuse": "level_fusion_topdown",
            "neck.bottom_up_fusion.branches.0": "level_fusion_downtop_downout",
            "neck.bottom_up_fusion.branches.1": "level_fusion_downtop_topout",
            "neck.bottom_up_fusion.fuse": "level_fusion_downtop", "aux_head.conv": "AuxHead"}
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        p = k.split(".")
        if k == "head.fc.weight":
            out["cls_head_fc_w"] = v.t()
        elif k == "head.fc.bias":
            out["cls_head_fc_b"] = v
        elif k == "aux_head.fc.weight":
            out["AuxHead_fc_w"] = v.t()
        elif k == "aux_head.fc.bias":
            out["AuxHead_fc_b"] = v
        elif k.startswith("neck.temporal."):
            out[f"TemporalModulation{p[2]}_weights"] = v
        elif k == "neck.bottom_up.0.weight":
            out["Downsamping_weights"] = v
        elif k.startswith("backbone.conv1."):
            out["conv1_weights" if p[2] == "conv" else f"bn_conv1_{bn[p[3]]}"] = v
        elif k.startswith("backbone.layer"):
            name = f"{int(p[1][5:]) + 1}{chr(ord('a') + int(p[2]))}_branch{convs[p[3]]}"
            out[f"res{name}_weights" if p[4] == "conv" else f"bn{name}_{bn[p[5]]}"] = v
        else:
            prefix = next(pre for pre in neck if k.startswith(pre + "."))
            rest = k[len(prefix) + 1:].split(".")
            out[neck[prefix] + ("_weights" if rest[0] == "conv" else f"_bn_{bn[rest[1]]}")] = v
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("paddle")
    cfg = d / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    torch.manual_seed(0)
    model = build_model(load_config(cfg)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        logits = model(x)
    return cfg, model, x, logits, tpn_to_paddle_names(model.state_dict())


def test_seed_pdparams_loads_and_matches(tiny, tmp_path):
    cfg, model, x, logits, paddle_sd = tiny
    assert len(paddle_sd) == sum(1 for k in model.state_dict() if not k.endswith("num_batches_tracked"))
    path = tmp_path / "tpn.pdparams"
    with open(path, "wb") as f:  # fluid.save: pickle protocol 2 of {name: ndarray}
        pickle.dump({k: v.numpy() for k, v in paddle_sd.items()}, f, protocol=2)
    loaded = load_model(cfg, path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), logits)
        torch.testing.assert_close(loaded.forward_aux(x), model.forward_aux(x))
    report = convert_checkpoint(path, tmp_path / "out.pth", config=str(cfg))
    assert "(paddle_tpn)" in report
    with torch.no_grad():
        torch.testing.assert_close(load_model(cfg, tmp_path / "out.pth")(x), logits)


def test_seed_persistables_folder_loads_and_matches(tiny, tmp_path):
    cfg, model, x, logits, paddle_sd = tiny
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name, t in paddle_sd.items():
        write_lod_tensor(folder / name, t.numpy())
    # what save_persistables also writes during training: optimiser state and the counter
    write_lod_tensor(folder / "conv1_weights_velocity_0", paddle_sd["conv1_weights"].numpy())
    write_lod_tensor(folder / "learning_rate_0", np.array([0.01], dtype="float32"))
    write_lod_tensor(folder / "@LR_DECAY_COUNTER@", np.array([5], dtype="int64"))
    (folder / "__model__").write_bytes(b"\x0a\x00")
    tensors, skipped = read_persistables(folder)
    assert skipped == ["__model__"] and len(tensors) == len(paddle_sd) + 3
    report = convert_checkpoint(folder, tmp_path / "out.pth", config=str(cfg))
    assert "dropped 3 non-weight tensors" in report
    with torch.no_grad():
        torch.testing.assert_close(load_model(cfg, tmp_path / "out.pth")(x), logits)


def test_paddle_errors_list_the_tensors(tiny, tmp_path):
    cfg, model, x, logits, paddle_sd = tiny
    sd = {k: v.numpy() for k, v in paddle_sd.items() if k != "Downsamping_weights"}
    sd["cls_head_fc_w"] = np.zeros((256, 7), dtype="float32")
    sd["mystery_weights"] = np.zeros(3, dtype="float32")
    path = tmp_path / "bad.pdparams"
    with open(path, "wb") as f:
        pickle.dump(sd, f, protocol=4)
    target = build_model(load_config(cfg))
    with pytest.raises(CheckpointError, match=r"1 unexpected tensors for format paddle_tpn: mystery_weights"):
        load_weights(target, path)
    del sd["mystery_weights"]
    with open(path, "wb") as f:
        pickle.dump(sd, f, protocol=4)
    with pytest.raises(CheckpointError) as e:
        load_weights(target, path)
    assert "1 missing: neck.bottom_up.0.weight" in str(e.value)
    assert "mis-shaped: head.fc.weight (7, 256) vs model (10, 256)" in str(e.value)
    folder = tmp_path / "broken"
    folder.mkdir()
    write_lod_tensor(folder / "conv1_weights", np.zeros((2, 2), dtype="float32"))
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"1 files are not Paddle tensors: notes\.txt"):
        read_persistables(folder)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/tpn_paddle_pwned",))


class _EvalData:
    """How Paddle 2.x pickles a static-graph LoDTensor."""

    def __init__(self, array, expr="data"):
        self.array, self.expr = array, expr

    def __reduce__(self):
        return (eval, (self.expr, {"data": self.array}))


def test_pdparams_runs_no_code(tmp_path):
    path = tmp_path / "evil.pdparams"
    with open(path, "wb") as f:
        pickle.dump({"conv1_weights": _Exploit()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="posix.system is not allowed|os.system is not allowed"):
        read_pdparams(path)
    assert not os.path.exists("/tmp/tpn_paddle_pwned")
    with open(path, "wb") as f:
        pickle.dump({"w": _EvalData(np.ones(2), "__import__('os').getcwd()")}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refusing to evaluate"):
        read_pdparams(path)
    # the forms Paddle 2.x writes are read: eval('data', ...) and (name, array) tuples
    with open(path, "wb") as f:
        pickle.dump({"a": _EvalData(np.arange(3.0)), "b": ("linear_0.w_0", np.ones((2, 2), "float32")),
                     "StructuredToParameterName@@": {"a": "a"}}, f, protocol=4)
    got = read_pdparams(path)
    assert sorted(got) == ["a", "b"] and got["a"].tolist() == [0.0, 1.0, 2.0] and got["b"].shape == (2, 2)


def test_pdparams_big_arrays_saved_in_slices_are_joined(tmp_path):
    # fluid.save with protocol 2/3 splits arrays over 1 GiB into `name@@.i` slices
    w = np.arange(24, dtype="float32").reshape(2, 3, 4)
    flat = w.flatten()
    saved = {"w@@.0": flat[:10], "w@@.1": flat[10:20], "w@@.2": flat[20:], "b": np.ones(3, "float32"),
             "UnpackBigParamInfor@@": {"w": {"OriginShape": (2, 3, 4), "slices": ["w@@.0", "w@@.1", "w@@.2"]}}}
    path = tmp_path / "big.pdparams"
    with open(path, "wb") as f:
        pickle.dump(saved, f, protocol=2)
    got = read_pdparams(path)
    assert sorted(got) == ["b", "w"] and torch.equal(got["w"], torch.from_numpy(w))
