"""Training that keeps no activations for frozen layers: TinyTL and sparse updates that truly fit.

Why this module exists: with plain autograd, freezing a convolution's weight saves almost
nothing, because the layers around it still save full float tensors for the backward pass --
BatchNorm (eval) saves its input, ReLU its output, and with a trainable BatchNorm bias the
gradient has to flow through every frozen layer below it. Measured on MLPerf Tiny's DS-CNN at
batch 32: 18.1 MB saved for full fine-tuning, 18.1 MB for biases + head. TinyTL (Cai et al.,
NeurIPS 2020) rests on the observation that a bias gradient needs no activation at all, and a
ReLU needs only its sign.

How: every ``Conv2d -> BatchNorm2d (eval) -> ReLU`` run inside an ``nn.Sequential`` whose conv
and BatchNorm scale are frozen is computed by one custom :class:`torch.autograd.Function`,
:class:`_ConvBnRelu`. Its forward runs without autograd, in place (conv, then ``* scale + shift``
and ReLU on the conv's output) and saves only the ReLU mask **bit-packed** (1 bit per element,
32x smaller than the float tensor it replaces) and references to the frozen weight (no copy).
Its backward rebuilds the mask, takes the BatchNorm bias gradient as a sum, and propagates to
the layer's input with the transposed convolution -- which needs the weight, not the input.
A layer whose conv weight *is* trained (the sparse update's chosen layers) also saves its
input, the one tensor a weight gradient needs. Global average pooling becomes ``mean``, whose
backward needs the input's shape only (``AdaptiveAvgPool2d`` saves its input).

Why a custom Function and not ``saved_tensors_hooks`` or recomputation: hooks can only move or
compress what autograd chose to save (three float tensors per layer, where one bit is needed),
and checkpointing recomputes forward activations, so its peak still holds a segment's full
tensors. Detaching frozen blocks' inputs would cut the gradient a trainable bias below needs.
The Function saves exactly what the math needs.

The rewrite changes no parameter, buffer or state-dict key: the model's ``nn.Sequential``
containers get an instance ``forward`` that dispatches runs to the Function, so the optimizer,
``state_dict`` and the served copy are untouched (fine-tuning works on a copy anyway).

Sparse update (Lin et al., "On-device training under 256 KB", NeurIPS 2022): biases everywhere,
the classifier, and the weights of the last ``k`` pointwise (1x1) convolutions -- the layers the
paper's contribution analysis ranks highest per byte (late layers, pointwise over depthwise) --
with ``k`` chosen by the caller under the memory budget.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from torch.nn.grad import conv2d_weight

__all__ = ["LightReport", "make_memory_light", "pointwise_convs", "sparse_trainable"]

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as bits (8 per byte, zero-padded to a multiple of 8)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8).to(torch.uint8) * _BIT_WEIGHTS).sum(1, dtype=torch.uint8)


def _unpack(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    n = 1
    for d in shape:
        n *= int(d)
    bits = packed.unsqueeze(1).bitwise_and(_BIT_WEIGHTS).ne(0)
    return bits.reshape(-1)[:n].view(shape)


def _conv_input_grad(
    conv: nn.Conv2d, x_shape: torch.Size, weight: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """The conv's input gradient as a transposed convolution (needs the weight, not the input).

    ``conv_transpose2d`` is used rather than ``torch.nn.grad.conv2d_input`` because the latter
    goes through ``convolution_backward``, which on CPU allocated two more activation-sized
    buffers than the result (measured with the allocator's events on DS-CNN).
    """
    stride, padding, dilation = conv.stride, conv.padding, conv.dilation
    assert isinstance(padding, tuple)
    extra = [
        int(x_shape[2 + i])
        - ((int(grad.shape[2 + i]) - 1) * stride[i] - 2 * padding[i]
           + dilation[i] * (conv.kernel_size[i] - 1) + 1)
        for i in range(2)
    ]  # fmt: skip
    return torch.nn.functional.conv_transpose2d(
        grad, weight, None, stride, padding, tuple(extra), conv.groups, dilation
    )


def _conv_weight_grad(
    conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """The weight gradient; a pointwise conv's as one batched matmul over views of its operands.

    Why not always ``convolution_backward``: on CPU its weight gradient switched algorithm
    between batch 8 and 16 and allocated a third more than linear in the batch (measured on
    DS-CNN's 1x1 layers), which no plan extrapolated from small batches can predict; the matmul
    allocates ``N x out x in`` floats, linear in the batch.
    """
    if (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
    ):
        n, c_out, c_in = grad.shape[0], grad.shape[1], x.shape[1]
        g = grad.reshape(n, c_out, -1)
        per_sample = torch.bmm(g, x.reshape(n, c_in, -1).transpose(1, 2))
        return per_sample.sum(0).view_as(weight)
    out: torch.Tensor = conv2d_weight(  # type: ignore[no-untyped-call]
        x, weight.shape, grad, conv.stride, conv.padding, conv.dilation, conv.groups
    )
    return out


class _ConvBnRelu(torch.autograd.Function):
    """``relu(bn_eval(conv(x)))`` saving the packed ReLU mask (and ``x`` if W is trained)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        shift: torch.Tensor,
        conv: nn.Conv2d,
        scale: torch.Tensor,
        offset: torch.Tensor,
    ) -> torch.Tensor:
        # shift: the BatchNorm bias (trainable); scale, offset: frozen gamma/sqrt(var+eps) and
        # -mean*scale, so y = relu(conv(x) * scale + offset + shift)
        z = conv._conv_forward(x, weight, None)
        z.mul_(scale.view(1, -1, 1, 1)).add_((offset + shift).view(1, -1, 1, 1)).relu_()
        ctx.shape = z.shape
        ctx.conv = conv
        ctx.x_shape = x.shape
        ctx.needs_x = ctx.needs_input_grad[1]
        ctx.save_for_backward(x if ctx.needs_x else None, weight, scale, _pack(z.gt(0)))
        out: torch.Tensor = z
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, weight, scale, mask = ctx.saved_tensors
        conv: nn.Conv2d = ctx.conv
        g = grad.masked_fill(~_unpack(mask, ctx.shape), 0.0)
        grad_shift = g.sum((0, 2, 3)) if ctx.needs_input_grad[2] else None
        gz = g.mul_(scale.view(1, -1, 1, 1))
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _conv_input_grad(conv, ctx.x_shape, weight, gz)
        if ctx.needs_x:
            grad_w = _conv_weight_grad(conv, x, weight, gz)
        return grad_x, grad_w, grad_shift, None, None, None


def _fusable(conv: nn.Module, bn: nn.Module, relu: nn.Module) -> bool:
    """A run the Function computes exactly: frozen-statistics BN with a frozen scale."""
    return (
        type(conv) is nn.Conv2d
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and isinstance(bn, nn.BatchNorm2d)
        and not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
        and bn.affine
        and not bn.weight.requires_grad
        and type(relu) is nn.ReLU
    )


def _run_fused(conv: nn.Conv2d, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    assert bn.running_var is not None and bn.running_mean is not None
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        offset = -bn.running_mean * scale
    needs = x.requires_grad or conv.weight.requires_grad or bn.bias.requires_grad
    if not (torch.is_grad_enabled() and needs):
        with torch.no_grad():  # nothing to train below: the in-place forward, nothing saved
            z: torch.Tensor = conv._conv_forward(x, conv.weight, None)
            z.mul_(scale.view(1, -1, 1, 1)).add_((offset + bn.bias).view(1, -1, 1, 1)).relu_()
            return z
    out: torch.Tensor = _ConvBnRelu.apply(  # type: ignore[no-untyped-call]
        x, conv.weight, bn.bias, conv, scale, offset
    )
    return out


def _leaves(seq: nn.Sequential) -> list[nn.Module]:
    """Nested plain ``nn.Sequential`` containers flattened into one list of layers."""
    out: list[nn.Module] = []
    for layer in seq:
        out.extend(_leaves(layer) if type(layer) is nn.Sequential else [layer])
    return out


def _sequential_forward(self: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    # One loop over the flattened layers: a nested container's call would keep its input
    # alive in the caller's frame for the whole block (one activation per nesting level).
    layers = _leaves(self)
    i = 0
    while i < len(layers):
        if i + 2 < len(layers) and _fusable(layers[i], layers[i + 1], layers[i + 2]):
            conv, bn = layers[i], layers[i + 1]
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            x = _run_fused(conv, bn, x)
            i += 3
        else:
            x = layers[i](x)
            i += 1
    return x


def _mean_pool(self: nn.AdaptiveAvgPool2d, x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3), keepdim=True)  # backward keeps the shape only, not x


class LightReport:
    """How many layer runs the rewrite took over (for the plan and the tests)."""

    def __init__(self, fused: int, pools: int) -> None:
        self.fused = fused
        self.pools = pools


def make_memory_light(model: nn.Module) -> LightReport:
    """Route frozen ``Conv -> BN(eval) -> ReLU`` runs and global pools through the light path.

    Call after ``requires_grad`` and train/eval modes are set; runs are matched on every
    forward, so a later change of modes is still honoured (a training-mode BN is not fused).
    """
    fused = pools = 0
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            layers = list(module)
            fused += sum(
                _fusable(a, b, c) for a, b, c in zip(layers, layers[1:], layers[2:], strict=False)
            )
            module.forward = types.MethodType(_sequential_forward, module)  # type: ignore[method-assign]
        elif isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            module.forward = types.MethodType(_mean_pool, module)  # type: ignore[method-assign]
            pools += 1
    return LightReport(fused, pools)


def pointwise_convs(model: nn.Module) -> list[str]:
    """Names of the 1x1, ungrouped convolutions, in forward (definition) order."""
    return [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Conv2d and m.kernel_size == (1, 1) and m.groups == 1
    ]


def sparse_trainable(model: nn.Module, layers: int) -> list[str]:
    """Also train the weights of the last ``layers`` pointwise convs; returns their names."""
    names = pointwise_convs(model)[-layers:] if layers > 0 else []
    modules = dict(model.named_modules())
    for name in names:
        weight = modules[name].weight
        assert isinstance(weight, nn.Parameter)
        weight.requires_grad_(True)
    return names
