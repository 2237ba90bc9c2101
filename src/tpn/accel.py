"""Fast execution on a GPU, the one place for its policy: uint8 clips in, normalisation,
mixed precision (bf16, or fp16 with loss scaling), channels_last_3d and torch.compile (with
inductor's kernel tuning as an option), shared by the training engine, testing and benchmarks
(`benchmarks/train_step.py` builds a benchmark's training step on it).

Clips travel host -> device as uint8 (4x fewer bytes than float32); normalisation happens
on the device, inside the compiled graph, where it fuses with the layout change.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from tpn.config import ConfigError, TrainConfig
from tpn.data.transforms import normalize
from tpn.models.layers import fold_batchnorm, set_fused_bn

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # test.precision / --precision


@dataclass(frozen=True)
class Execution:
    """How a model runs: autocast dtype (None: fp32), channels_last_3d, torch.compile (False,
    True or a mode such as "reduce-overhead", which adds CUDA graphs), and with compile,
    `inductor_tuning`: coordinate-descent tuning of the Triton kernels inductor generates (the
    BatchNorm statistics, normalisation and ReLU kernels), benchmarked on the GPU at their first run;
    `activation_budget` < 1: the share of the activations the compiled graph may save for the
    backward (torch's activation memory budget: cheap ops are recomputed in the backward instead);
    `fused_bn`: training BatchNorm (+ add) (+ ReLU) as Triton kernels (`tpn.models.fused_bn`);
    with compile, `gemm_tuning`: 1x1x1 convs as matrix multiplies, autotuned between cuBLAS and
    Triton templates into which the bias, residual add and ReLU fuse (inductor's max-autotune)."""

    amp: torch.dtype | None = None
    channels_last: bool = False
    compile: bool | str = False
    inductor_tuning: bool = False
    activation_budget: float = 1.0
    fused_bn: bool = False
    gemm_tuning: bool = False

    @property
    def loss_scaling(self) -> bool:
        """fp16 gradients underflow without a loss scaler; bf16 and fp32 need none."""
        return self.amp == torch.float16


def execution(train_cfg: TrainConfig, device: torch.device, compile_model: bool = True,
              precision: str = "auto") -> Execution:
    """The config's execution on `device`: autocast, channels_last_3d and compile on CUDA; fp32 on CPU.

    `precision` ("fp32", "bf16", "fp16"; `test.precision`) replaces the autocast dtype of
    `train.amp` / `train.amp_dtype` on any device (on CPU through CPU autocast); "auto" keeps them.
    """
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    cuda = device.type == "cuda"
    if precision != "auto":
        amp = PRECISIONS[precision]
    else:
        amp = AMP_DTYPES[train_cfg.amp_dtype] if train_cfg.amp and cuda else None
    if not cuda:
        return Execution(amp)
    mode = False
    if train_cfg.compile and compile_model:
        mode = True if train_cfg.compile_mode == "default" else train_cfg.compile_mode
    fused_bn = train_cfg.fused_bn is True or (train_cfg.fused_bn == "auto" and not mode)
    if fused_bn and importlib.util.find_spec("triton") is None:
        if train_cfg.fused_bn is True:
            raise ConfigError("train.fused_bn: true needs Triton (pip install triton; CUDA builds of torch bring it)")
        fused_bn = False
    return Execution(amp, train_cfg.channels_last, mode, bool(mode) and train_cfg.inductor_tuning,
                     train_cfg.activation_budget if mode else 1.0, fused_bn)


def compile_options(ex: Execution) -> dict:
    """torch.compile's keyword arguments for `ex`: its mode, or, with `inductor_tuning` or
    `gemm_tuning`, the mode's inductor options plus coordinate-descent tuning and/or 1x1 convs as
    autotuned GEMMs (torch.compile takes a mode or options, not both)."""
    mode = ex.compile if isinstance(ex.compile, str) else None
    if not (ex.inductor_tuning or ex.gemm_tuning):
        return {"mode": mode}
    from torch._inductor import list_mode_options

    options = dict(list_mode_options(mode or "default"))
    if ex.inductor_tuning:
        options["coordinate_descent_tuning"] = True
    if ex.gemm_tuning:
        options.update(max_autotune=True, conv_1x1_as_mm=True)
    return {"options": options}


def to_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last weights: channels_last_3d for 3D convs, channels_last for the 2D convs
    of a frame backbone (TSM), whose features reach the 3D neck already channels_last_3d."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            m.to(memory_format=torch.channels_last_3d)
        elif isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return model


def make_forward(model: nn.Module, mean: Sequence[float], std: Sequence[float], ex: Execution = Execution(),
                 with_labels: bool = False) -> Callable:
    """fn(x_uint8 [N,3,T,H,W], labels?) -> model output (losses dict in train mode, else logits).

    `mean`, `std`: per channel, in 0-255 (`data.mean`, `data.std`).
    """
    device = next(model.parameters()).device
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    amp = ex.amp is not None
    if ex.channels_last:
        to_channels_last(model)
    if ex.fused_bn:
        set_fused_bn(model)

    def forward(x8: torch.Tensor, labels: torch.Tensor | None = None):
        x = normalize(x8, mean_t, std_t)  # keeps the layout: loader batches come channels_last_3d
        x = x.contiguous(memory_format=torch.channels_last_3d) if ex.channels_last else x.contiguous()
        with torch.autocast(device.type, dtype=ex.amp or torch.bfloat16, enabled=amp):
            return model(x, labels) if with_labels else model(x)

    if not ex.compile:
        return forward
    # static shapes: a new batch size recompiles instead of falling back to slower dynamic kernels
    compiled = torch.compile(forward, dynamic=False, **compile_options(ex))
    if ex.activation_budget >= 1.0:
        return compiled
    import torch._functorch.config as functorch_config

    def budgeted(*args):  # the budget is read when a graph is (re)compiled, inside a call
        with functorch_config.patch(activation_memory_budget=ex.activation_budget):
            return compiled(*args)

    return budgeted


def make_eval_forward(model: nn.Module, mean: Sequence[float], std: Sequence[float], ex: Execution = Execution(),
                      fold_bn: bool = False, low_precision_weights: bool = True) -> Callable:
    """fn(x_uint8 [N,3,T,H,W]) -> logits. `fold_bn` runs a BN-folded copy (the model is untouched).

    With `fold_bn` and autocast on CUDA, the folded copy also holds its weights in the autocast
    dtype (`low_precision_weights`): the numbers autocast would use (it casts conv/linear
    weights at every call), without the cast kernels in each forward.
    """
    if fold_bn:
        model = fold_batchnorm(model)
        if low_precision_weights and ex.amp is not None and next(model.parameters()).device.type == "cuda":
            model = model.to(ex.amp)
    return make_forward(model, mean, std, ex, with_labels=False)

