"""ONNX export of a tpn model: `tpn export CONFIG --checkpoint CKPT --format onnx OUT`.

The graph takes `clip` (N, 3, T, H, W), float, already normalised, and returns `logits`
(N, classes); N is a dynamic axis, T/H/W are fixed at export time (the neck's temporal
pooling depends on T). Uses torch's TorchScript-based exporter, which needs the `onnx` package (a `[dev]` extra);
the check against PyTorch needs `onnxruntime`.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

from tpn.errors import TpnError, first_line
from tpn.options import check_clip_shape


class ExportError(TpnError):
    pass


def export_onnx(config, checkpoint, out: str | Path, frames: int | None = None, size: int | None = None,
                opset: int = 17, overrides=(), check: bool = True) -> str:
    from tpn.config import load_config
    from tpn.convert.weights import load_model

    if importlib.util.find_spec("onnx") is None:
        raise ExportError("tpn export needs the onnx package: pip install onnx (onnxruntime too, for the check)")
    check_clip_shape(frames, size)
    cfg = load_config(config, overrides) if not hasattr(config, "model") else config
    model = load_model(cfg, checkpoint).eval()
    t, s = frames if frames is not None else cfg.data.clip_len, size if size is not None else cfg.data.crop_size
    example = torch.randn(2, 3, t, s, s, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        try:
            torch.onnx.export(
                model, (example,), str(out), input_names=["clip"], output_names=["logits"],
                dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, dynamo=False,
            )
        except (RuntimeError, ValueError) as e:  # an opset the exporter lacks, a clip too small for the model
            out.unlink(missing_ok=True)
            raise ExportError(f"tpn export (opset {opset}, clip {t}x{s}x{s}): "
                              f"{first_line(e)}") from None
    lines = [f"exported {cfg.name} ({checkpoint or 'random init'}) -> {out}: input clip (N, 3, {t}, {s}, {s}), "
             f"output logits (N, {cfg.model.head.num_classes}), opset {opset}"]
    if check:
        err = check_onnx(model, out, example)
        if err is not None:
            lines.append(f"  onnxruntime matches PyTorch: max |diff| {err:.2e} on a batch of {example.shape[0]}")
    return "\n".join(lines)


def check_onnx(model: torch.nn.Module, path: str | Path, x: torch.Tensor) -> float | None:
    """Max abs difference of onnxruntime's logits vs PyTorch's (None when onnxruntime is absent)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(["logits"], {"clip": x.numpy()})[0])
    with torch.no_grad():
        ref = model(x)
    err = (got - ref).abs().max().item()
    if not err <= 1e-3 * max(1.0, ref.abs().max().item()):
        raise ExportError(f"{path}: onnxruntime's logits differ from PyTorch's by {err:.3g}")
    return err
