"""Training BatchNorm (+ residual add) (+ ReLU) as two Triton kernels forward and two backward,
over channels-last tensors seen as [rows, channels] (`train.fused_bn`).

Same model as `BatchNorm` -> `+ residual` -> `ReLU`: batch statistics over all rows (biased variance
to normalise, unbiased to update the running variance, `momentum`, `eps`, `num_batches_tracked` as
torch's BatchNorm), computed in fp32 from the stored bf16/fp32 values. What differs is rounding:
the normalised value, the residual add and the ReLU are computed in fp32 and rounded once.

Forward: (1) per block of rows, each channel's mean and squared deviations (combined exactly, as
Chan et al.); (2) y = relu(x * scale + shift + residual). Backward: (3) per block, each channel's
sum(g) and sum(g * x_hat), where g is dy masked by the ReLU (recomputed from x, or read from y when
a residual was added; with a residual, g is also its gradient, written here); (4) dx. The small
per-channel combinations of the blocks' partial results are torch ops (fused by torch.compile).

Needs Triton (installed with CUDA builds of torch). Tests run the kernels on the CPU through
Triton's interpreter (TRITON_INTERPRET=1).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import triton
import triton.language as tl

BLOCK_M = 128  # rows per program
BLOCK_C = 64  # channels per program
NUM_WARPS = 4


@triton.jit
def _tile(M, C, BM: tl.constexpr, BC: tl.constexpr):
    """This program's [BM rows, BC channels] tile: element offsets, its mask, channel indices and their mask."""
    pm, pc = tl.program_id(0), tl.program_id(1)
    rows = pm * BM + tl.arange(0, BM)
    cols = pc * BC + tl.arange(0, BC)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    return rows.to(tl.int64)[:, None] * C + cols[None, :], mask, cols, cmask


@triton.jit
def _channel(ptr, cols, cmask):
    """A per-channel fp32 vector, broadcast over the tile's rows."""
    return tl.load(ptr + cols, mask=cmask, other=0.0)[None, :]


@triton.jit
def _stats_kernel(x_ptr, part_ptr, M, C, BM: tl.constexpr, BC: tl.constexpr):
    """part[block, 0, c] = the block's mean of channel c, part[block, 1, c] = its sum of squared deviations."""
    offs, mask, cols, cmask = _tile(M, C, BM, BC)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    n = tl.minimum(M - tl.program_id(0) * BM, BM).to(tl.float32)
    mean = tl.sum(x, axis=0) / n
    d = tl.where(mask, x - mean[None, :], 0.0)
    base = part_ptr + tl.program_id(0).to(tl.int64) * 2 * C + cols
    tl.store(base, mean, mask=cmask)
    tl.store(base + C, tl.sum(d * d, axis=0), mask=cmask)


@triton.jit
def _apply_kernel(x_ptr, r_ptr, y_ptr, scale_ptr, shift_ptr, M, C,
                  HAS_RES: tl.constexpr, RELU: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    """y = [relu](x * scale + shift [+ r]), computed in fp32, stored in y's dtype."""
    offs, mask, cols, cmask = _tile(M, C, BM, BC)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = x * _channel(scale_ptr, cols, cmask) + _channel(shift_ptr, cols, cmask)
    if HAS_RES:
        z += tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        z = tl.maximum(z, 0.0)
    tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_after_relu(dy_ptr, x, offs, mask, cols, cmask, scale_ptr, shift_ptr, RELU: tl.constexpr):
    """dy where x * scale + shift (as the forward computed it, no residual) was positive."""
    g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        g = tl.where(x * _channel(scale_ptr, cols, cmask) + _channel(shift_ptr, cols, cmask) > 0.0, g, 0.0)
    return g


@triton.jit
def _grad_stats_kernel(x_ptr, y_ptr, dy_ptr, g_ptr, mean_ptr, rstd_ptr, scale_ptr, shift_ptr, part_ptr, M, C,
                       HAS_RES: tl.constexpr, RELU: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    """part[block, 0, c] = sum(g), part[block, 1, c] = sum(g * x_hat); g = dy where the output was
    positive (ReLU), from y with a residual (then g, the residual's gradient, is stored), else from
    x * scale + shift as the forward computed it."""
    offs, mask, cols, cmask = _tile(M, C, BM, BC)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if RELU:
            g = tl.where(tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32) > 0.0, g, 0.0)
        tl.store(g_ptr + offs, g.to(g_ptr.dtype.element_ty), mask=mask)
    else:
        g = _grad_after_relu(dy_ptr, x, offs, mask, cols, cmask, scale_ptr, shift_ptr, RELU)
    xhat = (x - _channel(mean_ptr, cols, cmask)) * _channel(rstd_ptr, cols, cmask)
    base = part_ptr + tl.program_id(0).to(tl.int64) * 2 * C + cols
    tl.store(base, tl.sum(g, axis=0), mask=cmask)
    tl.store(base + C, tl.sum(g * xhat, axis=0), mask=cmask)


@triton.jit
def _grad_input_kernel(x_ptr, dy_ptr, g_ptr, dx_ptr, mean_ptr, rstd_ptr, scale_ptr, shift_ptr, k_g_ptr, k_xhat_ptr,
                       M, C, HAS_RES: tl.constexpr, RELU: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr):
    """dx = scale * (g - sum(g) / M - x_hat * sum(g * x_hat) / M); the two sums arrive divided by M
    (k_g, k_xhat); g as `_grad_stats_kernel` made it (stored there with a residual)."""
    offs, mask, cols, cmask = _tile(M, C, BM, BC)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        g = _grad_after_relu(dy_ptr, x, offs, mask, cols, cmask, scale_ptr, shift_ptr, RELU)
    xhat = (x - _channel(mean_ptr, cols, cmask)) * _channel(rstd_ptr, cols, cmask)
    k_g, k_xhat = _channel(k_g_ptr, cols, cmask), _channel(k_xhat_ptr, cols, cmask)
    dx = _channel(scale_ptr, cols, cmask) * (g - k_g - xhat * k_xhat)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _channels_last(x: torch.Tensor) -> torch.memory_format:
    """The channels-last format of x's rank (3D clips or 2D frames)."""
    return torch.channels_last_3d if x.dim() == 5 else torch.channels_last


def _grid(m: int, c: int) -> tuple[int, int]:
    return triton.cdiv(m, BLOCK_M), triton.cdiv(c, BLOCK_C)


class _BNAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps: float, relu: bool):
        c = x.shape[1]  # x: dense channels-last, so its storage is [rows, C] from its data pointer
        m = x.numel() // c
        grid = _grid(m, c)
        part = torch.empty(grid[0], 2, c, device=x.device, dtype=torch.float32)
        _stats_kernel[grid](x, part, m, c, BM=BLOCK_M, BC=BLOCK_C, num_warps=NUM_WARPS)
        counts = torch.full((grid[0], 1), float(BLOCK_M), device=x.device)
        counts[-1] = m - (grid[0] - 1) * BLOCK_M
        means, m2s = part[:, 0], part[:, 1]
        mean = (means * counts).sum(0) / m
        var = (m2s + counts * (means - mean) ** 2).sum(0) / m
        rstd = torch.rsqrt(var + eps)
        scale = weight.float() * rstd
        shift = bias.float() - mean * scale
        y = torch.empty_like(x)
        _apply_kernel[grid](x, x if residual is None else residual, y, scale, shift, m, c,
                            HAS_RES=residual is not None, RELU=relu, BM=BLOCK_M, BC=BLOCK_C, num_warps=NUM_WARPS)
        ctx.save_for_backward(x, y, mean, rstd, scale, shift)
        ctx.has_res, ctx.relu = residual is not None, relu
        ctx.dtypes = weight.dtype, None if residual is None else residual.dtype
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        x, y, mean, rstd, scale, shift = ctx.saved_tensors
        dy = dy.contiguous(memory_format=_channels_last(x))
        c = x.shape[1]
        m = x.numel() // c
        grid = _grid(m, c)
        g = torch.empty_like(x) if ctx.has_res else None
        part = torch.empty(grid[0], 2, c, device=x.device, dtype=torch.float32)
        _grad_stats_kernel[grid](x, y, dy, dy if g is None else g, mean, rstd, scale, shift, part, m, c,
                                 HAS_RES=ctx.has_res, RELU=ctx.relu, BM=BLOCK_M, BC=BLOCK_C, num_warps=NUM_WARPS)
        sums = part.sum(0)
        dbias, dweight = sums[0], sums[1]
        dx = torch.empty_like(x)
        _grad_input_kernel[grid](x, dy, dy if g is None else g, dx, mean, rstd, scale, shift, dbias / m, dweight / m,
                                 m, c, HAS_RES=ctx.has_res, RELU=ctx.relu, BM=BLOCK_M, BC=BLOCK_C, num_warps=NUM_WARPS)
        wdt, rdt = ctx.dtypes
        return dx, dweight.to(wdt), dbias.to(wdt), None if g is None else g.to(rdt), None, None


def supported(bn: nn.Module, x: torch.Tensor) -> bool:
    """Whether `bn` on `x` can take the kernels: a plain BatchNorm2d/3d in training mode that tracks
    running statistics with a momentum and has a weight and bias, on a channels-last tensor of more
    than one value per channel."""
    if type(bn) not in (nn.BatchNorm2d, nn.BatchNorm3d) or not (bn.training and bn.track_running_stats and bn.affine):
        return False
    return bn.momentum is not None and x.is_contiguous(memory_format=_channels_last(x)) and x.numel() > x.shape[1]


def bn_act(x: torch.Tensor, bn: nn.Module, residual: torch.Tensor | None = None, relu: bool = True) -> torch.Tensor:
    """[relu](bn(x) [+ residual]) for a training-mode BatchNorm `bn` (see `supported`), updating its
    running statistics and `num_batches_tracked` as torch's BatchNorm does."""
    if residual is not None:
        residual = residual.contiguous(memory_format=_channels_last(x))
    y, mean, var = _BNAct.apply(x, bn.weight, bn.bias, residual, bn.eps, relu)
    with torch.no_grad():
        m = x.numel() // x.shape[1]
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), bn.momentum)
        bn.running_var.lerp_((var * (m / max(m - 1, 1))).to(bn.running_var.dtype), bn.momentum)
        bn.num_batches_tracked.add_(1)
    return y
