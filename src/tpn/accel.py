"""Fast execution on a GPU: uint8 clips in, normalisation, bf16 autocast, channels_last_3d
and torch.compile in one place, shared by the training engine, testing and benchmarks.

Clips travel host -> device as uint8 (4x fewer bytes than float32); normalisation happens
on the device, inside the compiled graph, where it fuses with the layout change.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn

from tpn.config import Config
from tpn.data.transforms import normalize
from tpn.models.resnet3d import ConvBN


def to_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last weights: channels_last_3d for 3D convs, channels_last for the 2D convs
    of a frame backbone (TSM), whose features reach the 3D neck already channels_last_3d."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            m.to(memory_format=torch.channels_last_3d)
        elif isinstance(m, nn.Conv2d):
            m.to(memory_format=torch.channels_last)
    return model


def make_forward(model: nn.Module, cfg: Config, amp: bool, channels_last: bool, compile_model: bool | str,
                 with_labels: bool) -> Callable:
    """fn(x_uint8 [N,3,T,H,W], labels?) -> model output (losses dict in train mode, else logits).

    `compile_model`: False, True, or a torch.compile mode such as "reduce-overhead" (CUDA graphs).
    """
    device = next(model.parameters()).device
    mean = torch.tensor(cfg.data.mean, dtype=torch.float32, device=device)
    std = torch.tensor(cfg.data.std, dtype=torch.float32, device=device)
    amp = amp and device.type == "cuda"
    if channels_last:
        to_channels_last(model)

    def forward(x8: torch.Tensor, labels: torch.Tensor | None = None):
        x = normalize(x8, mean, std)  # keeps the layout: loader batches come channels_last_3d
        x = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x.contiguous()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return model(x, labels) if with_labels else model(x)

    if not compile_model:
        return forward
    # static shapes: a new batch size recompiles instead of falling back to slower dynamic kernels
    mode = compile_model if isinstance(compile_model, str) else None
    return torch.compile(forward, mode=mode, dynamic=False)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model with every BatchNorm folded into the conv before it.

    Inference only: conv(x) * s + b with s = gamma / sqrt(var + eps), b = beta - mean * s
    becomes one conv with weight W * s and bias b, so no BN kernel runs at test time.
    """
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, ConvBN) and m.bn is not None:
            bn, conv = m.bn, m.conv
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            m.bn = None
    return folded


def compile_arg(train_cfg) -> bool | str:
    """The `compile_model` argument for a TrainConfig: False, True, or a torch.compile mode."""
    if not train_cfg.compile:
        return False
    return True if train_cfg.compile_mode == "default" else train_cfg.compile_mode


def make_eval_forward(model: nn.Module, cfg: Config, amp: bool = True, channels_last: bool = True,
                      compile_model: bool | str = False, fold_bn: bool = False, bf16_weights: bool = True) -> Callable:
    """fn(x_uint8 [N,3,T,H,W]) -> logits. `fold_bn` runs a BN-folded copy (the model is untouched).

    With `fold_bn` and bf16 autocast on CUDA, the folded copy also holds its weights in bf16
    (`bf16_weights`): the numbers autocast would use (it casts conv/linear weights to bf16 at
    every call), without the cast kernels in each forward.
    """
    if fold_bn:
        model = fold_batchnorm(model)
        if bf16_weights and amp and next(model.parameters()).device.type == "cuda":
            model = model.to(torch.bfloat16)
    return make_forward(model, cfg, amp, channels_last, compile_model, with_labels=False)


def make_train_step(model: nn.Module, cfg: Config, amp: bool = True, channels_last: bool = True,
                    compile_model: bool | str = False, lr: float = 0.01) -> Callable:
    """A complete step (forward, backward, grad clip, fused SGD) with no host synchronisation.

    For benchmarks; the training engine builds its own optimiser and schedule around
    `make_forward`.
    """
    fwd = make_forward(model, cfg, amp, channels_last, compile_model, with_labels=True)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = next(model.parameters()).device.type == "cuda"
    opt = torch.optim.SGD(params, lr=lr, momentum=cfg.train.momentum, nesterov=cfg.train.nesterov,
                          weight_decay=cfg.train.weight_decay, fused=fused)

    def step(x8: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = fwd(x8, labels)["loss"]
        loss.backward()
        if cfg.train.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step
