"""Checkpoint files and the mmaction2 name mapping: strict, safe, atomic."""
import os
from pathlib import Path

import pytest
import torch

from tpn.checkpoint import CheckpointError, load_file, load_state_dict_strict, save_atomic
from tpn.config import load_config
from tpn.convert.weights import convert_checkpoint, fit_to_model, load_weights, rename
from tpn.models.build import build_model

KEYS = Path(__file__).parent / "data" / "keys_tpn_r50_8x8_k400.tsv"
TINY = ["model.backbone.base_channels=8", "model.backbone.stage_blocks=[1,1,1,1]",
        "model.neck.out_channels=32", "model.neck.groups=4", "model.head.num_classes=5"]


def mmaction2_reference_state_dict() -> dict:
    """Zeros with every name and shape of a real mmaction2 TPN R50 8x8 checkpoint."""
    sd = {}
    for line in KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype = line.split("\t")
        dims = [int(d) for d in shape.split(",")] if shape else []
        sd[key] = torch.zeros(dims, dtype=torch.int64 if key.endswith("num_batches_tracked") else torch.float32)
    return sd


def test_every_mmaction2_tensor_maps_onto_the_model():
    sd = mmaction2_reference_state_dict()
    assert len(sd) == 379
    renamed, dropped = rename(sd, "mmaction2", "ref")
    assert dropped == []
    model = build_model(load_config("tpn_r50_8x8_k400"))
    fit_to_model(model, renamed)
    load_state_dict_strict(model, renamed, "ref")  # raises on any missing / unexpected / mis-shaped


def test_mapping_errors_list_the_tensors():
    model = build_model(load_config("tpn_r50_8x8_k400"))
    sd = mmaction2_reference_state_dict()
    sd["neck.mystery.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 unexpected tensors for format mmaction2: neck\.mystery\.weight"):
        rename(sd, "mmaction2", "x.pth")
    sd = mmaction2_reference_state_dict()
    del sd["neck.pyramid_fusion.conv.weight"]
    sd["cls_head.fc_cls.weight"] = torch.zeros(10, 2048)
    renamed, _ = rename(sd, "mmaction2", "x.pth")
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(model, renamed, "x.pth")
    msg = str(e.value)
    assert "1 missing: neck.pyramid_fusion.conv.weight" in msg
    assert "mis-shaped: head.fc.weight (10, 2048) vs model (400, 2048)" in msg
    assert "\n" not in msg


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/tpn_pwned",))


def test_foreign_objects_are_never_executed(tmp_path):
    model = build_model(load_config("tpn_r50_8x8_k400", TINY))
    sd = {("cls_head.fc_cls." + k[len("head.fc."):] if k.startswith("head.fc.") else k): v
          for k, v in model.state_dict().items()}
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": sd, "meta": {"x": Exploit()}}, path)
    if os.path.exists("/tmp/tpn_pwned"):
        os.remove("/tmp/tpn_pwned")
    obj, skipped = load_file(path)
    assert not os.path.exists("/tmp/tpn_pwned")
    assert "posix.system" in skipped or "os.system" in skipped
    assert torch.equal(obj["state_dict"]["cls_head.fc_cls.weight"], model.state_dict()["head.fc.weight"])


def test_bad_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_file(tmp_path / "missing.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_file(tmp_path / "empty.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text.pth: not a readable checkpoint \(neither torch's zip format nor "
                                              r"a pickle of protocol 2 or later, as torch.save writes; it starts with "
                                              r"b'hell'\)"):
        load_file(tmp_path / "text.pth")
    # a protocol-0 pickle that names code keeps the message that says so
    (tmp_path / "p0.pth").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(CheckpointError, match="p0.pth: .*os.system"):
        load_file(tmp_path / "p0.pth")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"head.fc.weight": torch.zeros(2, 2)}}, good)
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"truncated.pth: not a readable checkpoint \(damaged zip archive: "
                                              r"failed finding central directory; truncated or corrupted\?\)$"):
        load_file(tmp_path / "truncated.pth")


def test_save_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pth"
    save_atomic({"a": torch.ones(2)}, target)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match=r"ckpt.pth: not saved \(disk full\); the file already there is unchanged"):
        save_atomic({"a": torch.zeros(2)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_convert_roundtrip_and_wrong_model(tmp_path):
    model = build_model(load_config("tpn_r50_8x8_k400", TINY))
    src = tmp_path / "tpn.pth"
    torch.save(model.state_dict(), src)
    dst = tmp_path / "out.pth"
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text("model:\n  backbone: {base_channels: 8, stage_blocks: [1, 1, 1, 1]}\n"
                        "  neck: {out_channels: 32, groups: 4}\n  head: {num_classes: 5}\n")
    report = convert_checkpoint(src, dst, config=str(cfg_path))
    assert "converted" in report
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["format"] == "tpn" and ckpt["config"]["model"]["head"]["num_classes"] == 5
    other = build_model(load_config("tpn_r50_8x8_k400", TINY[:-1] + ["model.head.num_classes=7"]))
    with pytest.raises(CheckpointError, match=r"mis-shaped: head\.fc\.weight \(5, 256\) vs model \(7, 256\)"):
        load_weights(other, dst)


def test_a_tpn_checkpoint_that_misfits_names_the_config_it_was_saved_with(tmp_path):
    from tpn import load_model
    from tpn.config import to_dict

    cfg = load_config("tpn_tiny_synth", ["model.head.num_classes=4"])  # as `tpn train ... --set` saves it
    save_atomic({"format": "tpn", "state_dict": build_model(cfg).state_dict(), "config": to_dict(cfg)},
                tmp_path / "best.pth")
    with pytest.raises(CheckpointError) as e:
        load_model("tpn_tiny_synth", tmp_path / "best.pth")
    assert "head.fc.weight (4, 256) vs model (10, 256)" in str(e.value)
    assert str(e.value).endswith("; it was saved with config tpn_tiny_synth (model.head.num_classes 4): pass that "
                                 "config (a training run's is config.yaml in its work dir)")
    assert load_model(cfg, tmp_path / "best.pth").head.fc.out_features == 4


def test_save_atomic_gives_the_file_the_mode_torch_save_would(tmp_path):
    """The temporary file of an atomic save is created 0600; the checkpoint gets 0666 less the
    umask, as a file torch.save opens itself, so a group that may read the work dir reads it."""
    old = os.umask(0o027)
    try:
        save_atomic({"w": torch.ones(1)}, tmp_path / "c.pth")
        torch.save({"w": torch.ones(1)}, tmp_path / "plain.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "c.pth").stat().st_mode & 0o777 == (tmp_path / "plain.pth").stat().st_mode & 0o777 == 0o640
