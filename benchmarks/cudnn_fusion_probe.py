"""Can cuDNN's graph API fuse TPN's BatchNorm into its convolutions? One GPU run, one JSON.

Issue 18 part 2 (feasibility). On an H100 about half of tpn's training step is memory-bound
BatchNorm statistics, normalisation and ReLU. NVIDIA's ResNet training removes those passes with
cuDNN runtime fusions: the batch statistics come out of the epilogue of the conv that makes the
tensor, and normalise+ReLU run in the prologue of the next conv. This probe asks cuDNN, through
the `nvidia-cudnn-frontend` Python API, whether it has engines for that on TPN's tensors: the
bottleneck convs of the ResNet-3D R50 slow-only backbone at batch 32, 8 frames, 56x56 .. 7x7,
kernels (1,1,1), (1,3,3) and (3,1,1), bf16, channels-last (NDHWC). Cases (x is the raw output of
the previous conv, scale/bias the per-channel BN affine folded with its batch statistics):

  fprop                 (a) the conv alone, vs torch's conv3d on the same tensors (sanity)
  fprop_genstats        (b) conv + per-channel sum and sum of squares in the epilogue
                            ("genstats"), vs torch's conv + a separate reduction
  sbr_fprop             (c) relu(x * scale + bias) in the conv's prologue
  sbr_fprop_genstats    (c) prologue + conv + statistics (NVIDIA's "ConvBNfprop")
  dgrad                 (d) the data gradient alone
  dgrad_drelu           (d) dgrad + ReLU backward in the epilogue, its mask recomputed from
                            x * scale + bias
  dgrad_drelu_dbnstats  (d) that + the two per-channel sums BN backward needs, sum(dz) and
                            sum(dz * x)
  wgrad                 (d) the weight gradient alone
  sbr_wgrad             (d) wgrad with the relu(x * scale + bias) prologue on its input

The prologue and dReLU cases run only on convs whose input is relu(BN(the previous conv)): conv2
and conv3 of a bottleneck. conv1 and the downsample read the block's output, relu(BN(conv3) +
shortcut), which a scale-bias-ReLU prologue cannot make.

Every case runs in two layouts over the same memory: `3d` (the model's 5D NDHWC tensors) and
`2d`, the conv as a 2D NHWC conv: (1,k,k) kernels over the N*T frames, (3,1,1) kernels over
(T, H*W). Every R50 bottleneck conv has such a form, so a fusion cuDNN offers for 2D convs only
is still usable (per-channel statistics are the same sums either way).

A graph with virtual tensors (the prologue and dReLU cases) that cuDNN refuses with fp32
intermediates and fp32 scale/bias is tried again with both in bf16, as cuDNN's own ConvBNfprop
sample types them: `variant` says which ran, `fp32_failure` why the first did not.

Per case and layout the JSON records: `status` (ok / unsupported / error / skipped); on failure
the stage (validate, build_operation_graph, create_execution_plans, check_support, build_plans,
execute), cuDNN's exact message and `cudnn.get_last_error_string()`; otherwise the plans cuDNN
offered (count, names of the first ones), the one built, its workspace and build seconds;
numerics: for each output max|out - ref| / max|ref| against an fp32 reference of the same math
on the same bf16 inputs (TF32 off, sums in fp64), for the fused graph (`err`) and for torch's
bf16 path (`torch_err`); for statistics also the mean and the variance derived as
sum_sq/n - mean^2 against a two-pass fp64 variance; for tensors also the share of elements off
by more than 1% of max|ref| (`frac_over_1pct`: one ReLU mask flipped where x * scale + bias is
within rounding of 0 moves the max error, not this); and GPU times in ms per call, fused
(`fused_ms`) and torch's unfused path doing the same work (`torch_ms`: cuDNN convs through
torch with cudnn.benchmark, the elementwise and reduction parts through torch.compile, as in
the compiled training step). A long GPU sleep is queued before each timed loop, so the CPU has
queued every call before the GPU reaches them and the events time the GPU alone. `summary`
adds each case up over R50: a conv shape counts as often as it occurs in the backbone.

Run on the GPU machine (one call: --budget-s, 360 s by default, plus start-up and the case in
flight; the wheel is carried in .whl/):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \\
        .whl/nvidia_cudnn_frontend-1.32.0-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl \\
      && PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/cudnn_fusion_probe.py \\
        --out $OUT/cudnn_fusion_probe.json

`--no-deps`: the wheel's dependencies (nvidia-cutlass-dsl, apache-tvm-ffi) serve the frontend's
own Python kernels, not the graph API used here; cuda-bindings, which it needs, is in the image.
The frontend is pointed at the cuDNN that torch loaded. The JSON is rewritten after every case,
so a crash or a timeout keeps what was measured; `--budget-s` stops starting new cases after
that many seconds (shapes run in the order of `--list`: the repeated blocks' convs first).
`--max-plans N` builds and times cuDNN's first N plans instead of its first. `--cases`,
`--shapes` and `--layouts` narrow the run. `python benchmarks/cudnn_fusion_probe.py --list`
prints the shapes and cases (no GPU needed). The shape and layout bookkeeping and the reference
math are tested on the CPU (tests/test_cudnn_fusion_probe.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

STAGE_BLOCKS = (3, 4, 6, 3)
LAYOUTS = ("3d", "2d")
STAGES_OF_A_BUILD = ("validate", "build_operation_graph", "create_execution_plans", "check_support")


# ---------------------------------------------------------------- the R50 bottleneck convs
@dataclass(frozen=True)
class ConvShape:
    """One conv's geometry: input (n, cin, t, h, w), output channels, kernel, stride, padding."""
    n: int
    cin: int
    cout: int
    t: int
    h: int
    w: int
    kernel: tuple
    stride: tuple
    padding: tuple
    prologue: bool  # its input is relu(BN(the previous conv)): a scale-bias-ReLU prologue can make it

    @property
    def out(self) -> tuple:
        """Output (t, h, w)."""
        return tuple((i + 2 * p - k) // s + 1
                     for i, k, s, p in zip((self.t, self.h, self.w), self.kernel, self.stride, self.padding))

    @property
    def key(self) -> str:
        k, s = "".join(map(str, self.kernel)), "".join(map(str, self.stride))
        return f"{self.cin}x{self.t}x{self.h}x{self.w}-{self.cout}_k{k}_s{s}" + ("_sbr" if self.prologue else "")

    def flops(self) -> int:
        t, h, w = self.out
        return 2 * self.n * self.cout * t * h * w * self.cin * self.kernel[0] * self.kernel[1] * self.kernel[2]

    def form_2d(self) -> str | None:
        """How the conv runs as a 2D conv over the same memory: `frames` ((1,k,k) over N*T),
        `time` ((k,1,1) over (T, H*W)), or None."""
        if self.kernel[0] == 1 and self.stride[0] == 1:
            return "frames"
        if self.kernel[1:] == (1, 1) and self.stride[1:] == (1, 1):
            return "time"
        return None


def r50_convs(batch: int = 32, frames: int = 8, size: int = 56, base: int = 64, stage_blocks=STAGE_BLOCKS,
              spatial_strides=(1, 2, 2, 2), inflate=(0, 0, 1, 1)) -> list[tuple[str, ConvShape]]:
    """Every bottleneck conv of ResNet3dSlowOnly (model order and names); `size` is the stem's output."""
    convs, cin, h = [], base, size
    for i, blocks in enumerate(stage_blocks):
        planes, out = base * 2**i, base * 2**i * 4
        k1, p1 = ((3, 1, 1), (1, 0, 0)) if inflate[i] else ((1, 1, 1), (0, 0, 0))
        for b in range(blocks):
            s = spatial_strides[i] if b == 0 else 1
            ho = (h - 1) // s + 1
            name = f"layer{i + 1}.{b}"
            convs.append((f"{name}.conv1", ConvShape(batch, cin, planes, frames, h, h, k1, (1, 1, 1), p1, False)))
            convs.append((f"{name}.conv2", ConvShape(batch, planes, planes, frames, h, h, (1, 3, 3), (1, s, s),
                                                     (0, 1, 1), True)))
            convs.append((f"{name}.conv3", ConvShape(batch, planes, out, frames, ho, ho, (1, 1, 1), (1, 1, 1),
                                                     (0, 0, 0), True)))
            if s != 1 or cin != out:
                convs.append((f"{name}.downsample", ConvShape(batch, cin, out, frames, h, h, (1, 1, 1), (1, s, s),
                                                              (0, 0, 0), False)))
            cin, h = out, ho
    return convs


def unique_shapes(convs) -> list[dict]:
    """The distinct geometries, each with the convs that have it; the repeated blocks' convs
    (block 1 of each stage: most of the backbone's time) first, then the rest in model order."""
    groups: dict = {}
    for name, shape in convs:
        groups.setdefault(shape, []).append(name)
    first = {shape for shape, names in groups.items() if any(n.split(".")[1] == "1" for n in names)}
    order = sorted(groups, key=lambda s: (s not in first, [n for n, c in convs].index(groups[s][0])))
    return [dict(shape=s, names=groups[s], count=len(groups[s])) for s in order]


# ---------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    name: str
    op: str  # fprop | dgrad | wgrad
    prologue: bool = False  # relu(x * scale + bias) on the conv's input
    genstats: bool = False  # per-channel sum and sum of squares of the output
    drelu: bool = False  # ReLU backward on dgrad's output, mask from x * scale + bias
    dbnstats: bool = False  # sum(dz) and sum(dz * x) after the ReLU backward

    @property
    def needs_prologue_shape(self) -> bool:
        return self.prologue or self.drelu

    @property
    def outputs(self) -> tuple:
        if self.op == "fprop":
            return ("Y", "SUM", "SQ_SUM") if self.genstats else ("Y",)
        if self.op == "dgrad":
            return ("DZ", "SUM_DZ", "SUM_DZX") if self.dbnstats else ("DZ",) if self.drelu else ("DX",)
        return ("DW",)


CASES = (
    Case("fprop", "fprop"),
    Case("fprop_genstats", "fprop", genstats=True),
    Case("sbr_fprop", "fprop", prologue=True),
    Case("sbr_fprop_genstats", "fprop", prologue=True, genstats=True),
    Case("dgrad", "dgrad"),
    Case("dgrad_drelu", "dgrad", drelu=True),
    Case("dgrad_drelu_dbnstats", "dgrad", drelu=True, dbnstats=True),
    Case("wgrad", "wgrad"),
    Case("sbr_wgrad", "wgrad", prologue=True),
)


def plan(shapes: list[dict], cases=CASES, layouts=LAYOUTS) -> list[tuple[dict, str, Case]]:
    """(shape, layout, case) in run order, leaving out what cannot apply."""
    return [(u, layout, c) for u in shapes for layout in layouts for c in cases
            if (u["shape"].prologue or not c.needs_prologue_shape)
            and (layout == "3d" or u["shape"].form_2d() is not None)]


# ---------------------------------------------------------------- layouts: the same memory as 2D
def conv_params(shape: ConvShape, layout: str) -> dict:
    if layout == "3d":
        return dict(stride=list(shape.stride), padding=list(shape.padding), dilation=[1, 1, 1])
    if shape.form_2d() == "frames":
        return dict(stride=list(shape.stride[1:]), padding=list(shape.padding[1:]), dilation=[1, 1])
    return dict(stride=[shape.stride[0], 1], padding=[shape.padding[0], 0], dilation=[1, 1])


def to_layout(t, shape: ConvShape, layout: str):
    """A 5D channels_last_3d tensor (activation, weight or (1,C,1,1,1) vector) seen in `layout`:
    always a view, so a fused graph writing into it writes the 5D buffer."""
    if layout == "3d":
        return t
    v = t.transpose(1, 2).flatten(0, 1) if shape.form_2d() == "frames" else t.flatten(3, 4)
    if v.untyped_storage().data_ptr() != t.untyped_storage().data_ptr():
        raise ValueError(f"{layout} view of a {tuple(t.shape)} tensor is a copy")
    return v


# ---------------------------------------------------------------- torch: data, reference, baseline
def bn_scale_bias(x, gamma, beta, eps: float = 1e-5):
    """Training BatchNorm as x * scale + bias from the batch statistics of x (biased variance,
    as BN normalises): per-channel (1,C,1,1,1) fp32 scale and bias, and the mean and variance."""
    import torch

    dims = [0] + list(range(2, x.dim()))
    xd = x.double()
    mean, var = xd.mean(dims), xd.var(dims, unbiased=False)
    scale = gamma.double() * torch.rsqrt(var + eps)
    bias = beta.double() - mean * scale
    shape = [1, -1] + [1] * (x.dim() - 2)
    return scale.float().view(shape), bias.float().view(shape), mean, var


def make_data(shape: ConvShape, device, seed: int = 0) -> dict:
    """bf16 channels_last_3d x (a raw conv output: not centred), w (He init), dy; fp32 scale and
    bias of a training BN over x (gamma around 1, small beta)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)  # drawn where used: 200M-element tensors
    cl = torch.channels_last_3d
    fan_in = shape.cin * shape.kernel[0] * shape.kernel[1] * shape.kernel[2]

    def rnd(*size, scale=1.0, shift=0.0):
        return torch.randn(*size, generator=g, device=device) * scale + shift

    x = rnd(shape.n, shape.cin, shape.t, shape.h, shape.w, scale=1.5, shift=0.3).to(torch.bfloat16, memory_format=cl)
    w = rnd(shape.cout, shape.cin, *shape.kernel, scale=(2 / fan_in) ** 0.5).to(torch.bfloat16, memory_format=cl)
    dy = rnd(shape.n, shape.cout, *shape.out).to(torch.bfloat16, memory_format=cl)
    gamma = 0.5 + torch.rand(shape.cin, generator=g, device=device)
    scale, bias, _, _ = bn_scale_bias(x, gamma, rnd(shape.cin, scale=0.1))
    return dict(x=x, w=w, dy=dy, scale=channel_vector(scale), bias=channel_vector(bias))


def channel_vector(v):
    """A (1,C,1,1,1) copy of `v` with channels-last strides (C,1,C,C,C) in every dim, as cuDNN's
    samples give per-channel operands (torch leaves the strides of size-1 dims as they were)."""
    import torch

    c = v.numel()
    out = torch.empty_strided((1, c, 1, 1, 1), (c, 1, c, c, c), device=v.device, dtype=v.dtype)
    return out.copy_(v.reshape(1, c, 1, 1, 1))


def _dims(t) -> list:
    return [0] + list(range(2, t.dim()))


def sbr(x, scale, bias):
    import torch

    return torch.relu(x.float() * scale + bias).to(x.dtype)


def channel_sums(y, acc):
    y = y.to(acc)
    return y.sum(_dims(y)), (y * y).sum(_dims(y))


def drelu(da, x, scale, bias):
    import torch

    return torch.where(x.float() * scale + bias > 0, da, torch.zeros_like(da))


def drelu_sums(da, x, scale, bias, acc):
    dz = drelu(da, x, scale, bias)
    dza = dz.to(acc)
    return dz, dza.sum(_dims(dz)), (dza * x.to(acc)).sum(_dims(dz))


class Ops:
    """The elementwise and reduction parts of a case: eager (the reference: sums in `acc`) or
    through torch.compile (the baseline, as the compiled training step runs them)."""

    def __init__(self, compiled: bool, acc):
        import torch

        wrap = (lambda f: torch.compile(f, dynamic=True)) if compiled else (lambda f: f)
        self.acc = acc
        self.sbr, self.drelu = wrap(sbr), wrap(drelu)
        self._sums, self._drelu_sums = wrap(channel_sums), wrap(drelu_sums)

    def sums(self, y):
        return self._sums(y, self.acc)

    def drelu_with_sums(self, da, x, scale, bias):
        return self._drelu_sums(da, x, scale, bias, self.acc)


def torch_path(case: Case, d: dict, ops: Ops, shape: ConvShape) -> dict:
    """`case` done unfused in torch on 5D tensors: its outputs by name (vectors flat)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.grad import conv3d_input, conv3d_weight

    st, pad = shape.stride, shape.padding
    out = {}
    if case.op == "fprop":
        a = ops.sbr(d["x"], d["scale"], d["bias"]) if case.prologue else d["x"]
        out["Y"] = F.conv3d(a, d["w"], None, st, pad)
        if case.genstats:
            out["SUM"], out["SQ_SUM"] = ops.sums(out["Y"])
    elif case.op == "dgrad":
        da = conv3d_input(d["x"].shape, d["w"], d["dy"], st, pad)
        if case.dbnstats:
            out["DZ"], out["SUM_DZ"], out["SUM_DZX"] = ops.drelu_with_sums(da, d["x"], d["scale"], d["bias"])
        elif case.drelu:
            out["DZ"] = ops.drelu(da, d["x"], d["scale"], d["bias"])
        else:
            out["DX"] = da
    else:
        a = ops.sbr(d["x"], d["scale"], d["bias"]) if case.prologue else d["x"]
        out["DW"] = conv3d_weight(a, d["w"].shape, d["dy"], st, pad)
    if case.genstats and ops.acc == torch.float64:  # the reference's two-pass variance, for the derived one
        y = out["Y"].double()
        out["VAR"] = y.var(_dims(y), unbiased=False)
    return out


def rel_err(out, ref) -> float:
    """max |out - ref| / max |ref| (elementwise relative error is meaningless where ref is ~0)."""
    o, r = out.double().reshape(ref.shape), ref.double()
    return float((o - r).abs().max() / r.abs().max().clamp_min(1e-30))


def frac_over_1pct(outs: dict, ref: dict) -> dict:
    """Per 5D output, the share of elements off by more than 1% of max |ref|: bf16 rounding and
    summation order stay well below that, a ReLU mask flipped at an element (x * scale + bias
    within rounding of 0) does not, so a few flips show here as ~1e-7, a wrong kernel as ~1."""
    out = {}
    for k, v in outs.items():
        if v.dim() == 5 and k in ref:
            off = (v.double() - ref[k].double()).abs() > 0.01 * ref[k].abs().max()
            out[k] = float(f"{off.double().mean().item():.3g}")
    return out


def errors(outs: dict, ref: dict, count: int) -> dict:
    """rel_err of every output; for SUM/SQ_SUM also the mean and the variance sum_sq/n - mean^2."""
    errs = {k: rel_err(v, ref[k]) for k, v in outs.items() if k in ref}
    if {"SUM", "SQ_SUM"} <= set(outs) and "VAR" in ref:
        mean = outs["SUM"].double().reshape(-1) / count
        errs["MEAN"] = rel_err(mean, ref["SUM"] / count)
        errs["VAR"] = rel_err(outs["SQ_SUM"].double().reshape(-1) / count - mean * mean, ref["VAR"])
    return {k: float(f"{v:.3g}") for k, v in errs.items()}


# ---------------------------------------------------------------- cuDNN graphs
# How the graph types what is not an input or output: its virtual tensors (`intermediate`) and the
# scale and bias operands (`affine`). fp32 first; cuDNN's own ConvBNfprop sample keeps both in the
# I/O type, so a graph refused in fp32 is tried again in bf16.
VARIANTS = ("fp32", "bf16")


def describe(fe, graph, case: Case, specs: dict, conv: dict, affine_dtype=None) -> dict:
    """Add `case`'s ops to `graph`; its tensors by name (inputs x, w, dy, scale, bias; outputs as
    `case.outputs`), with dims and strides from `specs` (name -> (dims, strides) of the buffers)."""
    bf16, f32 = fe.data_type.BFLOAT16, fe.data_type.FLOAT
    affine_dtype = affine_dtype or f32
    t = {}

    def inp(name, dtype=bf16):
        if name not in t:
            t[name] = graph.tensor(name=name, dim=specs[name][0], stride=specs[name][1], data_type=dtype)
        return t[name]

    def out(name, tensor, dtype=bf16):
        t[name] = tensor.set_output(True).set_dim(specs[name][0]).set_stride(specs[name][1]).set_data_type(dtype)

    def affine(x):  # x * scale + bias
        return graph.bias(input=graph.scale(input=x, scale=inp("scale", affine_dtype), name="bn_scale"),
                          bias=inp("bias", affine_dtype), name="bn_bias")

    if case.op == "fprop":
        a = graph.relu(input=affine(inp("x")), name="relu") if case.prologue else inp("x")
        out("Y", graph.conv_fprop(image=a, weight=inp("w"), name="conv", **conv))
        if case.genstats:
            s, q = graph.genstats(input=t["Y"], name="genstats")
            out("SUM", s, f32)
            out("SQ_SUM", q, f32)
    elif case.op == "dgrad":
        da = graph.conv_dgrad(loss=inp("dy"), filter=inp("w"), name="dgrad", **conv)
        if not case.drelu:
            out("DX", da)
        else:
            da.set_dim(specs["DZ"][0])  # strided dgrad's output size is ambiguous: pin it
            out("DZ", graph.relu_backward(loss=da, input=affine(inp("x")), name="drelu"))
        if case.dbnstats:
            add = fe.reduction_mode.ADD
            out("SUM_DZ", graph.reduction(input=t["DZ"], mode=add, name="sum_dz"), f32)
            dzx = graph.mul(a=t["DZ"], b=inp("x"), name="dz_x")
            out("SUM_DZX", graph.reduction(input=dzx, mode=add, name="sum_dzx"), f32)
    else:
        a = graph.relu(input=affine(inp("x")), name="relu") if case.prologue else inp("x")
        out("DW", graph.conv_wgrad(image=a, loss=inp("dy"), name="wgrad", **conv))
    return t


def last_error(fe) -> str:
    try:
        return str(fe.get_last_error_string())
    except Exception as e:
        return f"(get_last_error_string failed: {type(e).__name__})"


def plan_names(graph, n: int) -> list[str]:
    names = []
    for i in range(n):
        try:
            names.append(graph.get_plan_name_at_index(i))
        except Exception as e:
            names.append(f"({type(e).__name__}: {e})"[:200])
    return names


def build(fe, graph, rec: dict, max_plans: int) -> list[int]:
    """validate .. check_support, then build plans in heuristic order until `max_plans` built
    (at most 8 tried); the built indices. Raises with rec["stage"] naming the failing step."""
    for stage in STAGES_OF_A_BUILD:
        rec["stage"] = stage
        if stage == "create_execution_plans":
            try:
                graph.create_execution_plans([fe.heur_mode.A, fe.heur_mode.FALLBACK])
            except Exception as e:  # a failing fallback query must not hide mode A's plans
                rec["heuristics_a_fallback_error"] = f"{type(e).__name__}: {e}"[:500]
                graph.create_execution_plans([fe.heur_mode.A])
            rec["plan_count"] = graph.get_execution_plan_count()
            rec["plan_names"] = plan_names(graph, min(rec["plan_count"], 6))
        else:
            getattr(graph, stage)()
    rec["stage"] = "build_plans"
    built, failures = [], {}
    for i in range(min(rec["plan_count"], 8)):
        try:
            graph.build_plan_at_index(i)
            built.append(i)
        except Exception as e:
            failures[str(i)] = f"{type(e).__name__}: {e}"[:300]
        if len(built) == max_plans:
            break
    if failures:
        rec["plan_build_failures"] = failures
    if not built:
        raise RuntimeError(f"no plan of {rec['plan_count']} built: {failures}")
    return built


# ---------------------------------------------------------------- timing
def gpu_ms(fn, iters: int = 10, reps: int = 3, warmup: int = 2) -> float:
    """GPU ms per call: median over `reps` loops of `iters` calls, each loop queued behind a
    ~20 ms sleep kernel so that CPU launch cost is not what the events measure."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    sleep = getattr(torch.cuda, "_sleep", None)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if sleep is not None:
            sleep(40_000_000)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return round(sorted(times)[len(times) // 2], 4)


# ---------------------------------------------------------------- one case
def alloc_out(ref):
    """A buffer for a fused output: 5D bf16 channels_last_3d, or an fp32 (1,C,1,1,1) vector."""
    import torch

    if ref.dim() == 1:
        return channel_vector(torch.zeros_like(ref, dtype=torch.float32))
    return torch.zeros(ref.shape, device=ref.device, dtype=torch.bfloat16).contiguous(
        memory_format=torch.channels_last_3d)


def run_fused(fe, handle, case: Case, shape: ConvShape, layout: str, d: dict, ref: dict, rec: dict,
              max_plans: int) -> None:
    """Build `case` in `layout`, run it once against the reference, time every built plan."""
    import torch

    bufs = {k: alloc_out(ref[k]) for k in case.outputs}
    variants = VARIANTS if case.prologue or case.drelu else VARIANTS[:1]  # others have no virtual tensors
    for variant in variants:
        affine = {k: d[k] if variant == "fp32" else channel_vector(d[k].to(torch.bfloat16)) for k in ("scale", "bias")}
        bufs.update(dict(affine, x=d["x"], w=d["w"], dy=d["dy"]))
        views = {k: to_layout(v, shape, layout) for k, v in bufs.items()}
        attempt = dict(variant=variant)
        try:
            graph, tensors, built = make_graph(fe, handle, case, shape, layout, views, variant, attempt, max_plans)
            rec.update(attempt)
            break
        except Exception as e:
            if variant == variants[-1]:
                rec.update(attempt)
                raise
            rec[f"{variant}_failure"] = dict(attempt, error=f"{type(e).__name__}: {e}"[:1000],
                                             cudnn_last_error=last_error(fe))
    pack = {tensors[k]: views[k] for k in tensors}
    times = {}
    for i in built:
        rec["stage"] = f"execute plan {i}"
        ws = torch.empty(max(graph.get_workspace_size_plan_at_index(i), 1), device="cuda", dtype=torch.uint8)

        def call():
            graph.execute_plan_at_index(pack, ws, index=i, handle=handle)

        if i == built[0]:
            rec["plan"], rec["workspace_bytes"] = graph.get_plan_name_at_index(i), ws.numel()
            check_outputs(call, bufs, case, shape, ref, rec)
        times[graph.get_plan_name_at_index(i)] = gpu_ms(call)
    rec["plan_ms"] = times
    rec["fused_ms"] = min(times.values())
    rec.pop("stage")


def make_graph(fe, handle, case: Case, shape: ConvShape, layout: str, views: dict, variant: str, rec: dict,
               max_plans: int) -> tuple:
    """`case`'s graph over `views` (the buffers as bound), built: (graph, its tensors, built plan indices)."""
    dtype = fe.data_type.FLOAT if variant == "fp32" else fe.data_type.BFLOAT16
    graph = fe.pygraph(io_data_type=fe.data_type.BFLOAT16, intermediate_data_type=dtype,
                       compute_data_type=fe.data_type.FLOAT, handle=handle)
    rec["stage"] = "describe"
    specs = {k: (list(v.shape), list(v.stride())) for k, v in views.items()}
    tensors = describe(fe, graph, case, specs, conv_params(shape, layout), dtype)
    t0 = time.perf_counter()
    built = build(fe, graph, rec, max_plans)
    rec["build_s"] = round(time.perf_counter() - t0, 2)
    return graph, tensors, built


def check_outputs(call, bufs: dict, case: Case, shape: ConvShape, ref: dict, rec: dict) -> None:
    """One run into zeroed outputs against the reference; then a second run into the same
    buffers: statistics that change by ~100% are accumulated (the caller must zero them each
    step), ~0% overwritten."""
    import torch

    for k in case.outputs:
        bufs[k].zero_()
    call()
    torch.cuda.synchronize()
    rec["err"] = errors({k: bufs[k] for k in case.outputs}, ref, stat_count(case, shape))
    rec["frac_over_1pct"] = frac_over_1pct({k: bufs[k] for k in case.outputs}, ref)
    first = {k: bufs[k].clone() for k in case.outputs if ref[k].dim() == 1}
    if first:
        call()
        torch.cuda.synchronize()
        rec["stats_second_run_change"] = max(rel_err(bufs[k], first[k].reshape(-1)) for k in first)


def stat_count(case: Case, shape: ConvShape) -> int:
    """Elements per channel that the statistics sum over."""
    t, h, w = shape.out if case.op == "fprop" else (shape.t, shape.h, shape.w)
    return shape.n * t * h * w


def record_failure(fe, rec: dict, e: Exception) -> None:
    msg = f"{type(e).__name__}: {e}"
    unsupported = (fe is not None and isinstance(e, fe.cudnnGraphNotSupportedError)) or "NOT_SUPPORTED" in msg
    rec.update(status="unsupported" if unsupported else "error", error=msg[:2000], cudnn_last_error=last_error(fe),
               trace=traceback.format_exc().splitlines()[-6:])


# ---------------------------------------------------------------- the run
def import_frontend() -> tuple:
    """The cudnn frontend module, pointed at the libcudnn that torch loaded (found in this
    process's memory map): one cuDNN in the process. Returns (module, info dict)."""
    import torch

    info = dict(torch_cudnn=torch.backends.cudnn.version())
    lib = next((line.split()[-1] for line in open("/proc/self/maps")
                if os.path.basename(line.split()[-1]).startswith("libcudnn.so")), None)
    info["torch_libcudnn"] = lib
    if lib:  # the frontend searches LD_LIBRARY_PATH's folders first when it loads cuDNN
        os.environ["LD_LIBRARY_PATH"] = os.path.dirname(lib) + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")
    import cudnn as fe

    info.update(frontend=getattr(fe, "__version__", "?"), frontend_file=fe.__file__)
    try:
        info["backend_cudnn"] = fe.backend_version()
    except Exception as e:
        info["backend_cudnn"] = f"{type(e).__name__}: {e}"
    return fe, info


def machine_info() -> dict:
    import torch

    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                platform=platform.platform(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sm=f"{p.major}{p.minor}", sms=p.multi_processor_count)
    return info


def shape_entry(u: dict) -> dict:
    s = u["shape"]
    return dict(asdict(s), out=list(s.out), names=u["names"], count=u["count"], form_2d=s.form_2d(),
                gflop=round(s.flops() / 1e9, 2), cases={})


class ShapeData:
    """A shape's tensors, reference outputs and torch timings, made once for its cases."""

    def __init__(self, shape: ConvShape, ops: Ops, ref_ops: Ops):
        self.shape, self.ops, self.ref_ops = shape, ops, ref_ops
        self.d = make_data(shape, "cuda")
        self.d32 = {k: v.float() for k, v in self.d.items()}
        self.refs, self.torch = {}, {}

    def ref(self, case: Case) -> dict:
        import torch

        if case.name not in self.refs:  # fp32 convs run once: no autotuning for them
            with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
                self.refs[case.name] = torch_path(case, self.d32, self.ref_ops, self.shape)
        return self.refs[case.name]

    def torch_rec(self, case: Case) -> dict:
        """torch's unfused path for `case`: its ms and its errors against the reference."""
        if case.name not in self.torch:
            t0 = time.perf_counter()
            outs = torch_path(case, self.d, self.ops, self.shape)
            first_s = time.perf_counter() - t0
            self.torch[case.name] = dict(
                torch_ms=gpu_ms(lambda: torch_path(case, self.d, self.ops, self.shape)),
                torch_err=errors(outs, self.ref(case), stat_count(case, self.shape)),
                torch_frac_over_1pct=frac_over_1pct(outs, self.ref(case)),
                torch_first_call_s=round(first_s, 2))
        return self.torch[case.name]


def run(out: Path, budget_s: float = 360, max_plans: int = 1, layouts=LAYOUTS, case_names=None, shape_keys=None,
        batch: int = 32, compile_torch: bool = True, log=print) -> dict:
    import torch

    t_start = time.perf_counter()
    torch.cuda.init()  # the context torch and the frontend's handle share
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 reference: true fp32
    shapes = [u for u in unique_shapes(r50_convs(batch)) if not shape_keys or u["shape"].key in shape_keys]
    cases = [c for c in CASES if not case_names or c.name in case_names]
    res: dict = dict(machine=machine_info(), settings=dict(batch=batch, budget_s=budget_s, max_plans=max_plans,
                                                           layouts=list(layouts), torch_compile=compile_torch),
                     shapes={u["shape"].key: shape_entry(u) for u in shapes})
    fe = handle = None
    try:
        fe, res["cudnn"] = import_frontend()
        handle = fe.create_handle()
        fe.set_stream(handle, torch.cuda.current_stream().cuda_stream)
    except Exception as e:
        fe = None
        res["frontend_error"] = f"{type(e).__name__}: {e}"
        res["frontend_trace"] = traceback.format_exc().splitlines()[-8:]
        log(f"frontend unusable: {res['frontend_error']}")
    ops, ref_ops = Ops(compile_torch, torch.float32), Ops(False, torch.float64)
    current = None
    for u, layout, case in plan(shapes, cases, layouts):
        rec = res["shapes"][u["shape"].key]["cases"].setdefault(case.name, {}).setdefault(layout, {})
        if time.perf_counter() - t_start > budget_s:
            rec["status"] = "skipped (budget)"
            continue
        if current is None or current.shape != u["shape"]:
            current = None
            torch.cuda.empty_cache()
            current = ShapeData(u["shape"], ops, ref_ops)
        run_case(fe, handle, current, case, layout, rec, max_plans)
        log(f"{u['shape'].key} {layout} {case.name}: {rec['status']} "
            + (f"{rec.get('fused_ms')} vs torch {rec.get('torch_ms')} ms, err {rec.get('err')}"
               if rec["status"] == "ok" else rec.get("error", "")[:200]))
        res["summary"] = summarise(res)
        res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        out.write_text(json.dumps(res, indent=1, default=str))  # what is done survives a later crash
    res["summary"] = summarise(res)
    res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    out.write_text(json.dumps(res, indent=1, default=str))
    return res


def run_case(fe, handle, sd: ShapeData, case: Case, layout: str, rec: dict, max_plans: int) -> None:
    """The fused graph (guarded: its failure is recorded) and torch's path, into `rec`."""
    try:
        rec.update(sd.torch_rec(case))
    except Exception as e:
        rec["torch_error"] = f"{type(e).__name__}: {e}"[:1000]
    if fe is None:
        rec.update(status="error", error="no cudnn frontend")
        return
    try:
        run_fused(fe, handle, case, sd.shape, layout, sd.d, sd.ref(case), rec, max_plans)
        rec["status"] = "ok"
        if rec.get("torch_ms"):
            rec["torch_over_fused"] = round(rec["torch_ms"] / rec["fused_ms"], 3)
    except Exception as e:
        record_failure(fe, rec, e)


def summarise(res: dict) -> dict:
    """Per case and layout: on how many shapes (and R50 convs) an engine ran, its largest error,
    and the time of the convs where both it and torch ran (`convs_timed`), fused vs torch, each
    shape counted as often as it occurs in R50."""
    total_convs = sum(s["count"] for s in res["shapes"].values())
    out: dict = {}
    for key, s in res["shapes"].items():
        for case, by_layout in s["cases"].items():
            for layout, rec in by_layout.items():
                agg = out.setdefault(case, {}).setdefault(layout, dict(
                    shapes_tried=0, shapes_ok=0, convs_ok=0, convs_timed=0, fused_ms=0.0, torch_ms=0.0, max_err=0.0,
                    statuses={}))
                status = rec.get("status", "?")
                agg["statuses"][status] = agg["statuses"].get(status, 0) + 1
                if status.startswith("skipped"):
                    continue
                agg["shapes_tried"] += 1
                if status != "ok":
                    continue
                agg["shapes_ok"] += 1
                agg["convs_ok"] += s["count"]
                agg["max_err"] = max([agg["max_err"], *rec.get("err", {}).values()])
                if rec.get("torch_ms"):  # times add up only where both sides ran
                    agg["convs_timed"] += s["count"]
                    agg["fused_ms"] += s["count"] * rec["fused_ms"]
                    agg["torch_ms"] += s["count"] * rec["torch_ms"]
    for by_layout in out.values():
        for agg in by_layout.values():
            agg["convs_in_r50"] = total_convs
            agg["fused_ms"], agg["torch_ms"] = round(agg["fused_ms"], 3), round(agg["torch_ms"], 3)
            agg["saved_ms"] = round(agg["torch_ms"] - agg["fused_ms"], 3)
    return out


def list_plan(batch: int = 32) -> str:
    shapes = unique_shapes(r50_convs(batch))
    lines = [f"{len(shapes)} shapes, {sum(u['count'] for u in shapes)} convs; (shape, layout, case) runs: "
             f"{len(plan(shapes))}"]
    for u in shapes:
        s = u["shape"]
        lines.append(f"{s.key:40s} x{u['count']}  out {s.out}  2d: {s.form_2d()}  {s.flops() / 1e9:.1f} GFLOP  "
                     f"{', '.join(u['names'][:3])}{' ...' if len(u['names']) > 3 else ''}")
    lines.append("cases: " + ", ".join(c.name for c in CASES))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="JSON file to write")
    ap.add_argument("--list", action="store_true", help="print the shapes and cases and exit (no GPU)")
    ap.add_argument("--budget-s", type=float, default=360, help="start no new case after this many seconds")
    ap.add_argument("--max-plans", type=int, default=1, help="plans to build and time per graph, in heuristic order")
    ap.add_argument("--layouts", nargs="*", default=list(LAYOUTS), choices=LAYOUTS)
    ap.add_argument("--cases", nargs="*", choices=[c.name for c in CASES], help="default: all")
    ap.add_argument("--shapes", nargs="*", help="shape keys (see --list); default: all")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-compile", action="store_true", help="torch's baseline eager instead of torch.compile")
    args = ap.parse_args()
    if args.list:
        print(list_plan(args.batch))
        return
    if args.out is None:
        ap.error("--out is required")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    res = run(args.out, args.budget_s, args.max_plans, args.layouts, args.cases, args.shapes, args.batch,
              not args.no_compile)
    print(json.dumps(res["summary"], indent=1))
    print(f"wrote {args.out} in {res['elapsed_s']} s")


if __name__ == "__main__":
    sys.exit(main())
