"""`benchmarks/cudnn_fusion_probe.py`'s GPU-free parts: the R50 conv shapes it probes, the 2D
views of the same memory, the reference math it judges cuDNN by, and its bookkeeping."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.cudnn_fusion_probe import (CASES, ConvShape, Ops, bn_scale_bias, conv_params, errors, make_data, plan,
                                           r50_convs, shape_entry, summarise, to_layout, torch_path, unique_shapes)

CASE = {c.name: c for c in CASES}


def test_probe_shapes_are_the_r50_models_bottleneck_convs():
    """The probe's list equals what the TPN R50 config's backbone runs at batch 32, 8x224x224
    (meta tensors: shapes only), conv for conv, in model order."""
    from tpn.config import load_config
    from tpn.models.build import build_model

    with torch.device("meta"):
        backbone = build_model(load_config("tpn_r50_8x8_k400")).backbone
    seen = []
    for name, m in backbone.named_modules():
        if isinstance(m, torch.nn.Conv3d) and name.startswith("layer"):
            m.register_forward_hook(lambda m, i, o, name=name: seen.append(
                (name.removesuffix(".conv"), tuple(i[0].shape), tuple(o.shape), m.kernel_size, m.stride, m.padding)))
    backbone(torch.empty(32, 3, 8, 224, 224, device="meta"))
    probe = [(name, (s.n, s.cin, s.t, s.h, s.w), (s.n, s.cout, *s.out), s.kernel, s.stride, s.padding)
             for name, s in r50_convs(32)]
    assert probe == seen and len(seen) == 52
    assert {n for n, s in r50_convs() if s.prologue} == {n for n, *_ in seen if n.endswith(("conv2", "conv3"))}
    shapes = unique_shapes(r50_convs())
    assert sum(u["count"] for u in shapes) == 52 and len({u["shape"] for u in shapes}) == len(shapes) == 23
    assert {(1, 1, 1), (1, 3, 3), (3, 1, 1)} == {u["shape"].kernel for u in shapes}
    first = [u["names"][0].split(".") for u in shapes[:12]]  # the repeated blocks' convs lead
    assert sorted((n[0], n[2]) for n in first) == sorted((f"layer{i}", c) for i in range(1, 5)
                                                         for c in ("conv1", "conv2", "conv3"))


@pytest.mark.parametrize("shape", [
    ConvShape(2, 8, 12, 3, 9, 7, (1, 3, 3), (1, 2, 2), (0, 1, 1), True),
    ConvShape(2, 8, 12, 3, 6, 5, (1, 1, 1), (1, 2, 2), (0, 0, 0), False),
    ConvShape(2, 8, 12, 4, 5, 3, (3, 1, 1), (1, 1, 1), (1, 0, 0), False),
])
def test_probe_2d_layout_is_the_same_conv_over_the_same_memory(shape):
    """`2d` binds views of the 5D buffers (writes land in them) with NHWC strides, and the 2D
    conv with the 2D parameters gives the 3D conv's output."""
    d = {k: v.float() for k, v in make_data(shape, "cpu").items()}
    y3 = F.conv3d(d["x"], d["w"], None, shape.stride, shape.padding).contiguous(memory_format=torch.channels_last_3d)
    assert tuple(y3.shape[2:]) == shape.out
    views = {k: to_layout(v, shape, "2d") for k, v in dict(d, y=y3).items()}
    for k, v in views.items():
        assert v.dim() == 4 and v.stride(1) == 1 and v.untyped_storage().data_ptr() == d.get(k, y3).data_ptr()
        assert list(v.stride())[2:] == [v.shape[3] * v.shape[1], v.shape[1]]
    p = conv_params(shape, "2d")
    y2 = F.conv2d(views["x"], views["w"], None, p["stride"], p["padding"], p["dilation"])
    torch.testing.assert_close(y2, views["y"], rtol=1e-5, atol=1e-5)
    assert shape.form_2d() == ("time" if shape.kernel[0] == 3 else "frames")
    assert ConvShape(2, 8, 12, 3, 5, 5, (3, 3, 3), (1, 1, 1), (1, 1, 1), True).form_2d() is None


def test_probe_reference_sums_are_what_batchnorm_training_needs():
    """The reference math: x * scale + bias is training BN; fprop_genstats' sums give the next
    BN's batch statistics; the dgrad_drelu_dbnstats outputs give autograd's gradient at the BN
    output and BN's weight and bias gradients (dbeta = sum dz, dgamma = invstd (sum dz x - mean sum dz))."""
    torch.manual_seed(0)
    shape = ConvShape(2, 6, 5, 3, 6, 6, (1, 3, 3), (1, 1, 1), (0, 1, 1), True)
    d = {k: v.float() for k, v in make_data(shape, "cpu", seed=3).items()}
    x, w, dy = d["x"], d["w"], d["dy"]
    gamma = (0.5 + torch.rand(6)).requires_grad_()
    beta = (0.1 * torch.randn(6)).requires_grad_()
    scale, bias, mean, var = bn_scale_bias(x, gamma.detach(), beta.detach())
    z = F.batch_norm(x, None, None, gamma, beta, training=True, eps=1e-5)
    z.retain_grad()
    torch.testing.assert_close(x * scale + bias, z.detach(), rtol=1e-5, atol=1e-5)
    (F.conv3d(torch.relu(z), w, None, shape.stride, shape.padding) * dy).sum().backward()

    ref = Ops(False, torch.float64)
    out = torch_path(CASE["dgrad_drelu_dbnstats"], dict(d, scale=scale, bias=bias), ref, shape)
    torch.testing.assert_close(out["DZ"], z.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["SUM_DZ"].float(), beta.grad, rtol=1e-4, atol=1e-4)
    invstd = torch.rsqrt(var + 1e-5)
    torch.testing.assert_close((invstd * (out["SUM_DZX"] - mean * out["SUM_DZ"])).float(), gamma.grad,
                               rtol=1e-4, atol=1e-4)

    fwd = torch_path(CASE["sbr_fprop_genstats"], dict(d, scale=scale, bias=bias), ref, shape)
    y = F.conv3d(torch.relu(z.detach()), w, None, shape.stride, shape.padding)
    torch.testing.assert_close(fwd["Y"], y, rtol=1e-4, atol=1e-4)
    n = y.numel() // y.shape[1]
    torch.testing.assert_close(fwd["SUM"] / n, fwd["Y"].double().mean((0, 2, 3, 4)))
    torch.testing.assert_close(fwd["SQ_SUM"] / n - (fwd["SUM"] / n) ** 2, fwd["VAR"])
    same = errors(fwd, fwd, n)
    assert max(same.values()) < 1e-12 and set(same) == {"Y", "SUM", "SQ_SUM", "VAR", "MEAN"}
    off = errors(dict(Y=fwd["Y"] * 1.01, SUM=fwd["SUM"] + 0.02 * fwd["SUM"].abs().max()), fwd, n)
    assert off["Y"] == pytest.approx(0.01, rel=1e-2) and off["SUM"] == pytest.approx(0.02, rel=1e-2)


def test_probe_plan_and_summary_bookkeeping():
    """Prologue/dReLU cases only where the input is relu(BN(previous conv)), 2D only where a 2D
    form exists; the summary weights each shape by its count in R50 and leaves out what did not run."""
    shapes = unique_shapes(r50_convs())
    runs = plan(shapes)
    assert all(u["shape"].prologue for u, _, c in runs if c.prologue or c.drelu)
    assert {c.name for u, _, c in runs if not u["shape"].prologue} == {"fprop", "fprop_genstats", "dgrad", "wgrad"}
    assert len(runs) == 2 * sum(9 if u["shape"].prologue else 4 for u in shapes)
    odd = dict(shape=ConvShape(2, 8, 8, 3, 5, 5, (3, 3, 3), (1, 1, 1), (1, 1, 1), False), names=["x"], count=1)
    assert {layout for _, layout, _ in plan([odd])} == {"3d"}

    a, b = shapes[0], shapes[2]  # x3 and x2 in R50
    res = dict(shapes={u["shape"].key: shape_entry(u) for u in (a, b)})
    res["shapes"][a["shape"].key]["cases"]["fprop"] = {
        "3d": dict(status="ok", fused_ms=1.0, torch_ms=1.5, err=dict(Y=0.004)),
        "2d": dict(status="unsupported", error="cudnnGraphNotSupportedError: no engine")}
    res["shapes"][b["shape"].key]["cases"]["fprop"] = {
        "3d": dict(status="ok", fused_ms=2.0, torch_ms=2.0, err=dict(Y=0.002)),
        "2d": dict(status="ok", fused_ms=3.0, err=dict(Y=0.5), torch_error="RuntimeError: x")}
    res["shapes"][b["shape"].key]["cases"]["wgrad"] = {"3d": dict(status="skipped (budget)")}
    s = summarise(res)
    assert s["fprop"]["3d"] | dict(statuses=None) == dict(
        shapes_tried=2, shapes_ok=2, convs_ok=5, convs_timed=5, convs_in_r50=5, fused_ms=7.0, torch_ms=8.5,
        saved_ms=1.5, max_err=0.004, statuses=None)
    assert s["fprop"]["2d"] | dict(statuses=None) == dict(  # no torch time: counted ok, not timed
        shapes_tried=2, shapes_ok=1, convs_ok=2, convs_timed=0, convs_in_r50=5, fused_ms=0, torch_ms=0, saved_ms=0,
        max_err=0.5, statuses=None)
    assert s["fprop"]["2d"]["statuses"] == {"unsupported": 1, "ok": 1}
    assert s["wgrad"]["3d"]["shapes_tried"] == 0 and s["wgrad"]["3d"]["statuses"] == {"skipped (budget)": 1}


def test_probe_counts_elements_off_apart_from_the_largest_error():
    """One element far off (a flipped ReLU mask) sets the max error but not the share of
    elements off by more than 1%; rounding-sized errors set neither."""
    from benchmarks.cudnn_fusion_probe import frac_over_1pct

    ref = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    out = ref * (1 + 1e-3 * torch.randn_like(ref))
    out.view(-1)[7] += ref.abs().max()
    assert errors(dict(DZ=out), dict(DZ=ref), 1)["DZ"] == pytest.approx(1.0, abs=0.01)
    assert frac_over_1pct(dict(DZ=out, SUM=out[0, :, 0, 0, 0]), dict(DZ=ref, SUM=ref[0, :, 0, 0, 0])) == {
        "DZ": float(f"{1 / ref.numel():.3g}")}
