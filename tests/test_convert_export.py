"""`tpn export`: ONNX with a dynamic batch axis, checked with onnxruntime against PyTorch."""
import numpy as np
import onnx
import onnxruntime as ort
import torch

from tpn.cli import main
from tpn.config import load_config
from tpn.convert.weights import load_model
from tpn.models.build import build_model

TINY_YAML = ("model:\n  backbone: {base_channels: 8, stage_blocks: [1, 1, 1, 1]}\n"
             "  neck: {out_channels: 64, groups: 8}\n  head: {num_classes: 10}\n"
             "data: {clip_len: 8, crop_size: 64}\n")


def test_export_onnx_dynamic_batch_matches_pytorch(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    torch.manual_seed(0)
    model = build_model(load_config(cfg))
    for m in model.modules():  # logits of a useful size, non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        if isinstance(m, torch.nn.Linear):
            m.weight.data.normal_(0, 1.0)
    ckpt = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(cfg), "--checkpoint", str(ckpt), "--format", "onnx", str(out)]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 8, 64, 64]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference = load_model(cfg, ckpt)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 8, 64, 64)
        got = sess.run(["logits"], {"clip": x.numpy()})[0]
        with torch.no_grad():
            ref = reference(x).numpy()
        assert got.shape == (batch, 10)
        assert np.abs(ref).max() > 0.1  # logits large enough for the tolerance to mean something
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_export_without_onnx_is_one_line_naming_the_package(tmp_path, capsys, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(cfg), "--format", "onnx", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install onnx" in err[0], err
    assert not out.exists()
