"""Model zoo: small architectures that can be rebuilt exactly from a bundle manifest.

This module is torch-only (the agent's torch runtime and the coordinator's compression
stack import it; the light agent path never does).

Why explicit channel lists instead of only a width multiplier: structured pruning and
distillation change layer widths, and a device must rebuild the *exact* pruned network
from the manifest alone. So every architecture is constructed from a plain JSON-able
``config`` (per-layer channel counts), ``width`` is only a convenience that fills that
config, and :func:`architecture_of` reads the config back from a (possibly pruned) module.
Low-rank factorization is recorded the same way, as ``{module name: rank}``.

Size: one module on purpose. Each architecture family is small (MLP ~35 lines, DS-CNN ~135
with its MLPerf Tiny KWS preset, ResNet-8 ~110, the byte-level LM ~140 with its KV cache,
kept out of the classifier registry in :data:`LANGUAGE_MODELS`); the rest is the contract that makes a manifest
rebuildable -- the registry and its shape-aware defaults (maps and (C, L) windows), the conv
geometry helpers, :class:`ArchitectureSpec`, :func:`architecture_of` reading a (pruned) module
back into a config, the low-rank twins and the strict checkpoint loader -- and every family must
agree with all of it on its config keys and layer names. (A custom model's stored source is
handled by the torch-free :mod:`edgefleet.model_source`.) Splitting per family would spread that one contract over
a package, and add a second torch-importing shared module to keep out of the light paths.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgefleet import model_source

__all__ = [
    "ARCHITECTURES",
    "DSCNN",
    "LANGUAGE_MODELS",
    "MLP",
    "ArchitectureError",
    "ArchitectureSpec",
    "ByteLM",
    "CheckpointMismatchError",
    "InputShapeError",
    "LowRankConv2d",
    "LowRankLinear",
    "ResNet8",
    "architecture_of",
    "build_model",
    "load_state_dict_strict",
    "with_source",
]

JSON = dict[str, Any]


class ArchitectureError(ValueError):
    """An architecture name, config or import path that cannot be built."""


class InputShapeError(ArchitectureError):
    """A zoo family that cannot take rows of the dataset's shape (e.g. a conv net on (F,))."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the architecture it was registered with."""


def _scaled(channels: int, width: float) -> int:
    """Scale a channel count by ``width``, keeping at least 4 channels (tiny nets collapse below)."""
    return max(4, round(channels * width))


#: a kernel, stride or padding: one int for both axes or (height, width); JSON gives lists
Pair = int | tuple[int, int] | list[int]


def _same(kernel: tuple[int, int]) -> tuple[int, int]:
    """Padding that keeps an odd kernel's output the input's size at stride 1."""
    return (kernel[0] // 2, kernel[1] // 2)


def _block_stride(stride: int, input_1d: bool) -> tuple[int, int]:
    """A block's stride; 1-D nets stride along the signal only (their height is 1)."""
    return (1, stride) if input_1d else (stride, stride)


def _geometry(
    stem_kernel: tuple[int, int],
    stem_stride: tuple[int, int],
    stem_padding: tuple[int, int],
    kernel: tuple[int, int],
    *,
    input_1d: bool,
) -> JSON:
    return {
        "stem_kernel": list(stem_kernel),
        "stem_stride": list(stem_stride),
        "stem_padding": list(stem_padding),
        "kernel": list(kernel),
        "input_1d": input_1d,
    }


def _as_1d(config: JSON) -> JSON:
    """A 2-D conv config for (C, L) windows: every (h, w) geometry becomes (1, h).

    Why Conv2d with (1, k) kernels on a (C, 1, L) view rather than Conv1d: the whole
    downstream stack speaks 2-D -- torch-pruning's groups, the low-rank conv twin, the
    exporter's Conv/ReduceMean over H and W, onnxruntime's QDQ quantiser and the MCU format
    (conv2d / depthwise_conv2d / global average pool over H, W, as TFLite Micro and CMSIS-NN
    run 1-D models too). The only extra op is one Unsqueeze at the input. The first kernel
    axis is taken as the time axis (the 10 of KWS's 10x4 stem is along the 49 frames).
    """
    out = dict(config)
    for key in ("stem_kernel", "stem_stride", "kernel"):
        if key in out:
            out[key] = [1, _pair(out[key])[0]]
    if "stem_padding" in out:
        out["stem_padding"] = [0, _pair(out["stem_padding"])[0]]
    out["input_1d"] = True
    return out


class DSCNN(nn.Module):
    """Depthwise-separable CNN (DS-CNN / MobileNet-v1 style, as in MLPerf Tiny KWS).

    A dense stem conv, then blocks of depthwise + pointwise 1x1 (each with BatchNorm + ReLU),
    global average pooling and one linear classifier. ``channels[0]`` is the stem width;
    ``channels[i]`` (i >= 1) is the output width of block i.

    The stem's kernel, stride and padding are config because MLPerf Tiny's KWS net starts with
    a 10x4 stride-2 conv over the 49x10 MFCC map (that first layer carries most of the time
    downsampling); their defaults are the original 3x3/1/1 so manifests written before these
    keys existed rebuild the same network. ``input_1d`` takes (C, L) signal windows: the
    forward adds a unit height and every kernel is (1, k), so the net stays Conv2d throughout
    (see :func:`conv_config_for`).
    """

    def __init__(
        self,
        channels: list[int],
        strides: list[int],
        num_classes: int = 10,
        in_channels: int = 1,
        stem_kernel: Pair = (3, 3),
        stem_stride: Pair = (1, 1),
        stem_padding: Pair = (1, 1),
        kernel: Pair = (3, 3),
        input_1d: bool = False,
    ) -> None:
        super().__init__()
        if len(strides) != len(channels) - 1:
            raise ArchitectureError("ds-cnn: need one stride per block (len(channels) - 1)")
        k = _pair(kernel)
        self.stem = nn.Sequential(
            nn.Conv2d(
                in_channels,
                channels[0],
                _pair(stem_kernel),
                stride=_pair(stem_stride),
                padding=_pair(stem_padding),
                bias=False,
            ),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        for c_in, c_out, stride in zip(channels[:-1], channels[1:], strides, strict=True):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(
                        c_in,
                        c_in,
                        k,
                        stride=_block_stride(stride, input_1d),
                        padding=_same(k),
                        groups=c_in,
                        bias=False,
                    ),
                    nn.BatchNorm2d(c_in),
                    nn.ReLU(),
                    nn.Conv2d(c_in, c_out, 1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.ReLU(),
                )
            )
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels[-1], num_classes)
        self.strides = list(strides)
        self.input_1d = bool(input_1d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_1d:
            x = x.unsqueeze(2)  # (N, C, L) -> (N, C, 1, L)
        x = self.blocks(self.stem(x))
        out: torch.Tensor = self.classifier(torch.flatten(self.pool(x), 1))
        return out

    def config(self) -> JSON:
        """Constructor kwargs read from the live layers (valid after channel pruning)."""
        stem = _conv_of(self.stem[0])
        channels = [_out_channels(self.stem[0])]
        kernel = list(_pair(stem.kernel_size))
        for block in self.blocks:
            assert isinstance(block, nn.Sequential)
            channels.append(_out_channels(block[3]))
            kernel = list(_pair(block[0].kernel_size))
        return {
            "channels": channels,
            "strides": self.strides,
            "num_classes": self.classifier.out_features,
            "in_channels": _in_channels(self.stem[0]),
            "stem_kernel": list(_pair(stem.kernel_size)),
            "stem_stride": list(_pair(stem.stride)),
            "stem_padding": list(_pair(stem.padding)),
            "kernel": kernel,
            "input_1d": self.input_1d,
        }

    @staticmethod
    def default_config(width: float, num_classes: int, in_channels: int) -> JSON:
        """MobileNet-v1-like widths (doubling at the stride), 4 blocks, sized for 8x8 inputs.

        Wide enough that the 1x1 convolutions dominate the weights and the compute, as in
        real DS-CNNs; with narrower layers per-channel quantisation metadata and per-op
        overhead would dominate instead.
        """
        base = [64, 128, 128, 256, 256]
        return {
            "channels": [_scaled(c, width) for c in base],
            "strides": [1, 2, 1, 1],
            "num_classes": num_classes,
            "in_channels": in_channels,
            **_geometry((3, 3), (1, 1), (1, 1), (3, 3), input_1d=False),
        }

    @staticmethod
    def kws_config(width: float, num_classes: int, in_channels: int) -> JSON:
        """MLPerf Tiny's KWS DS-CNN (``ds_cnn`` in mlcommons/tiny ``keras_model.py``).

        Conv 64 filters 10x4 stride 2, then four depthwise-separable blocks of 64 channels
        (depthwise 3x3 + pointwise 1x1, BN + ReLU each, stride 1), average pool, FC. On the
        49x10 MFCC map that is 25x5 after the stem and 2.66 M MACs. Keras' ``padding='same'``
        pads the 10-row kernel 4 above and 5 below; torch's Conv2d pads symmetrically, so we
        pad 5/5 rows and 1/1 columns: the same 25x5 output and MACs, the window grid shifted
        by one row (a separate Pad op would cost a copy and is not in the MCU format).
        Differences that vanish at inference: no conv biases (BatchNorm follows and the
        exporter folds it in) and no dropout; the final pool averages all 25x5 cells (Keras'
        24x5 pool window drops the last row).
        """
        return {
            "channels": [_scaled(64, width)] * 5,
            "strides": [1, 1, 1, 1],
            "num_classes": num_classes,
            "in_channels": in_channels,
            **_geometry((10, 4), (2, 2), (5, 1), (3, 3), input_1d=False),
        }


class _ResidualBlock(nn.Module):
    """Two kxk convs with a residual; a 1x1 projection when the shape changes."""

    def __init__(
        self,
        c_in: int,
        c_mid: int,
        c_out: int,
        stride: int,
        kernel: tuple[int, int] = (3, 3),
        input_1d: bool = False,
    ) -> None:
        super().__init__()
        s = _block_stride(stride, input_1d)
        self.conv1 = nn.Conv2d(c_in, c_mid, kernel, stride=s, padding=_same(kernel), bias=False)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = nn.Conv2d(c_mid, c_out, kernel, padding=_same(kernel), bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=s, bias=False), nn.BatchNorm2d(c_out)
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        out: torch.Tensor = self.relu(y + self.shortcut(x))
        return out


class ResNet8(nn.Module):
    """ResNet-8 as in the MLPerf Tiny image-classification benchmark (3 stages, 1 block each).

    ``stage_channels`` are the residual-stream widths (tied by the additions);
    ``mid_channels`` are the inner widths of each block, which pruning can cut independently.
    The default config is MLPerf Tiny IC's ``resnet_v1_eembc``: a 16-filter 3x3 stem, stages
    16/32/64 with strides 1/2/2, 1x1 strided projections, average pool, FC; 12.5 M MACs and
    ~78k parameters on 32x32x3. The reference's projections have no BatchNorm and its convs
    have biases; ours put a BatchNorm after every conv, which the exporter folds into the conv,
    so the exported graph has the reference's ops and MACs. ``kernel`` and ``input_1d`` serve
    other inputs, as in :class:`DSCNN`.
    """

    def __init__(
        self,
        stem_channels: int,
        stage_channels: list[int],
        mid_channels: list[int],
        strides: list[int],
        num_classes: int = 10,
        in_channels: int = 1,
        kernel: Pair = (3, 3),
        input_1d: bool = False,
    ) -> None:
        super().__init__()
        if not len(stage_channels) == len(mid_channels) == len(strides):
            raise ArchitectureError("resnet-8: stage_channels, mid_channels, strides must align")
        k = _pair(kernel)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, k, padding=_same(k), bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        c_in = stem_channels
        for c_out, c_mid, stride in zip(stage_channels, mid_channels, strides, strict=True):
            stages.append(_ResidualBlock(c_in, c_mid, c_out, stride, k, input_1d))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        self.input_1d = bool(input_1d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_1d:
            x = x.unsqueeze(2)  # (N, C, L) -> (N, C, 1, L)
        x = self.stages(self.stem(x))
        out: torch.Tensor = self.classifier(torch.flatten(self.pool(x), 1))
        return out

    def config(self) -> JSON:
        stem = self.stem[0]
        blocks = [b for b in self.stages if isinstance(b, _ResidualBlock)]
        return {
            "stem_channels": _out_channels(stem),
            "stage_channels": [_out_channels(b.conv2) for b in blocks],
            "mid_channels": [_out_channels(b.conv1) for b in blocks],
            "strides": [b.stride for b in blocks],
            "num_classes": self.classifier.out_features,
            "in_channels": _in_channels(stem),
            "kernel": list(_pair(_conv_of(stem).kernel_size)),
            "input_1d": self.input_1d,
        }

    @staticmethod
    def default_config(width: float, num_classes: int, in_channels: int) -> JSON:
        stages = [_scaled(c, width) for c in (16, 32, 64)]
        return {
            "stem_channels": _scaled(16, width),
            "stage_channels": stages,
            "mid_channels": list(stages),
            "strides": [1, 2, 2],
            "num_classes": num_classes,
            "in_channels": in_channels,
            "kernel": [3, 3],
            "input_1d": False,
        }


class MLP(nn.Module):
    """A small multi-layer perceptron on the flattened input (the MCU-friendliest baseline)."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out

    def config(self) -> JSON:
        hidden = [_out_channels(m) for m in self.features if _is_factorizable(m)]
        return {
            "in_features": self.in_features,
            "hidden": hidden,
            "num_classes": self.classifier.out_features,
        }

    @staticmethod
    def default_config(width: float, num_classes: int, in_features: int) -> JSON:
        return {
            "in_features": in_features,
            "hidden": [_scaled(128, width), _scaled(64, width)],
            "num_classes": num_classes,
        }


class ByteLM(nn.Module):
    """A byte-level causal transformer (vocabulary 256, one token per byte) with a KV cache.

    Why bytes and not a trained BPE: no tokenizer file to ship, version and keep in step with
    the weights on every device; any text (code, prose, a user's file) is in-vocabulary, and
    perplexity per byte compares across corpora. Pre-norm blocks (RMSNorm), rotary positions
    (no learned position table: the cache can grow past the training window, and the weights
    do not depend on the context length), a GELU MLP, no biases: every weight is a plain
    ``Linear``/``MatMul`` that weight-only quantizers (MatMulNBits, torchao) take as is.

    ``forward(tokens, past_k, past_v)`` is both prefill (past length 0) and decode (one new
    token): the caches are ``(layers, batch, heads, past, head_dim)`` and the outputs are the
    logits of every new position plus the grown caches, so one ONNX graph serves both phases.
    """

    inv_freq: torch.Tensor  # rotary frequencies, a non-persistent buffer

    def __init__(
        self,
        vocab: int = 256,
        dim: int = 256,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        context: int = 256,
    ) -> None:
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ArchitectureError(f"byte-lm: dim {dim} must split into {heads} even-sized heads")
        self.vocab, self.dim, self.n_layers, self.heads = vocab, dim, layers, heads
        self.mlp_ratio, self.context = mlp_ratio, context
        self.head_dim = dim // heads
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_LMBlock(dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.head = nn.Linear(dim, vocab, bias=False)
        inv = 1.0 / (10000.0 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def empty_cache(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The (past_k, past_v) a prefill starts from: zero past positions."""
        shape = (self.n_layers, batch, self.heads, 0, self.head_dim)
        return torch.zeros(shape), torch.zeros(shape)

    def forward(
        self, tokens: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        start = past_k.shape[3]
        pos = torch.arange(tokens.shape[1], device=tokens.device) + start
        angles = pos.float()[:, None] * self.inv_freq[None, :]
        cos, sin = angles.cos(), angles.sin()
        # query i (absolute start+i) sees keys 0..start+i
        keys = torch.arange(start + tokens.shape[1], device=tokens.device)
        mask = keys[None, :] <= pos[:, None]
        x = self.embed(tokens)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, cos, sin, mask, past_k[i], past_v[i])
            ks.append(k)
            vs.append(v)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits, torch.stack(ks), torch.stack(vs)

    def config(self) -> JSON:
        return {
            "vocab": self.vocab,
            "dim": self.dim,
            "layers": self.n_layers,
            "heads": self.heads,
            "mlp_ratio": self.mlp_ratio,
            "context": self.context,
        }

    @staticmethod
    def default_config(width: float, num_classes: int, context: int) -> JSON:
        """256 wide, 2 layers at width 1; ``num_classes`` is the vocabulary (256 bytes)."""
        return {
            "vocab": num_classes,
            "dim": 64 * max(1, round(4 * width)),
            "layers": 2,
            "heads": 4,
            "mlp_ratio": 4,
            "context": context,
        }


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding on (B, H, T, D), the half-split (GPT-NeoX) layout."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class _LMBlock(nn.Module):
    """One pre-norm transformer block of :class:`ByteLM`, appending to its KV cache."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.norm1 = nn.RMSNorm(dim, eps=1e-5)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.RMSNorm(dim, eps=1e-5)
        self.up = nn.Linear(dim, mlp_ratio * dim, bias=False)
        self.down = nn.Linear(mlp_ratio * dim, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v), dim=2)
        att = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.down(nn.functional.gelu(self.up(self.norm2(x))))
        return x, k, v


#: Language models: rebuilt from a manifest like the classifiers, but kept out of
#: :data:`ARCHITECTURES` (the classifier ``--arch`` list) -- they train and export on their
#: own path (``edgefleet.modelops.lm_train``), with bytes in and next-byte logits out.
LANGUAGE_MODELS: Mapping[str, type[nn.Module]] = {"byte-lm": ByteLM}


class LowRankLinear(nn.Module):
    """``Linear(in, out)`` replaced by ``Linear(in, r, bias=False) -> Linear(r, out)``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @property
    def out_features(self) -> int:
        return self.up.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(self.down(x))
        return out


class LowRankConv2d(nn.Module):
    """A ``Conv2d(in, out, k)`` replaced by ``Conv2d(in, rank, k)`` then a 1x1 ``Conv2d(rank, out)``.

    The first conv keeps the original kernel, stride and padding, so the pair is a drop-in
    replacement (the channel decomposition of Zhang et al., "Accelerating very deep CNNs").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        bias: bool,
        kernel_size: tuple[int, int] = (1, 1),
        stride: tuple[int, int] = (1, 1),
        padding: tuple[int, int] = (0, 0),
    ) -> None:
        super().__init__()
        self.down = nn.Conv2d(
            in_channels, rank, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.up = nn.Conv2d(rank, out_channels, 1, bias=bias)

    @property
    def out_channels(self) -> int:
        return self.up.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.up(self.down(x))
        return out


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d | LowRankConv2d):
        return module.out_channels
    if isinstance(module, nn.Linear | LowRankLinear):
        return module.out_features
    raise ArchitectureError(f"not a conv/linear layer: {type(module).__name__}")


def _conv_of(module: nn.Module) -> nn.Conv2d:
    """The conv that sets a layer's geometry (a low-rank pair keeps it in ``down``)."""
    if isinstance(module, LowRankConv2d):
        return module.down
    if isinstance(module, nn.Conv2d):
        return module
    raise ArchitectureError(f"not a conv layer: {type(module).__name__}")


def _in_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.in_channels
    if isinstance(module, LowRankConv2d):
        return module.down.in_channels
    raise ArchitectureError(f"not a conv layer: {type(module).__name__}")


def _is_factorizable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | LowRankLinear)


@dataclass(frozen=True)
class _Entry:
    cls: type[nn.Module]
    default_config: Callable[[float, int, int], JSON]
    #: Whether the third default_config argument is the input channel count (conv nets)
    #: or the flattened feature count (MLP).
    flat_input: bool
    #: one line for ``--arch`` help and errors
    doc: str = ""

    def config_for(
        self, name: str, width: float, num_classes: int, input_shape: tuple[int, ...]
    ) -> JSON:
        """The default config for a dataset's rows: (C, H, W) maps or (C, L) windows."""
        if self.flat_input:
            return self.default_config(width, num_classes, _numel(input_shape))
        if len(input_shape) not in (2, 3):
            raise InputShapeError(
                f"{name} needs rows of (C, H, W) maps or (C, L) signal windows, not "
                f"{tuple(input_shape)}; use mlp, or reshape x to (N, 1, L)"
            )
        config = self.default_config(width, num_classes, input_shape[0])
        return _as_1d(config) if len(input_shape) == 2 else config


ARCHITECTURES: Mapping[str, _Entry] = {
    "ds-cnn": _Entry(
        DSCNN, DSCNN.default_config, False, "DS-CNN, 3x3 stem, 64-256 channels (small inputs)"
    ),
    "ds-cnn-kws": _Entry(
        DSCNN, DSCNN.kws_config, False, "MLPerf Tiny KWS DS-CNN: 10x4/2 stem, 4 x 64-ch blocks"
    ),
    "resnet-8": _Entry(
        ResNet8, ResNet8.default_config, False, "MLPerf Tiny IC ResNet-8 (16/32/64)"
    ),
    "mlp": _Entry(MLP, MLP.default_config, True, "two hidden layers on the flattened input"),
}


@dataclass(frozen=True)
class ArchitectureSpec:
    """Everything needed to rebuild a network; serialised verbatim into bundle manifests.

    ``name`` is a zoo name or ``"custom"``; custom models carry ``import_path`` as
    ``"package.module:Factory"`` where ``Factory(**config)`` returns an ``nn.Module``, and,
    once registered, ``module_source``: the text of that module (see :func:`with_source`).
    """

    name: str
    config: JSON
    input_shape: tuple[int, ...]
    import_path: str | None = None
    low_rank: dict[str, int] = field(default_factory=dict)
    module_source: str | None = None

    def to_json(self) -> JSON:
        out = {
            "name": self.name,
            "config": self.config,
            "input_shape": list(self.input_shape),
            "import_path": self.import_path,
            "low_rank": dict(self.low_rank),
        }
        if self.module_source is not None:  # zoo manifests stay byte-identical
            out["module_source"] = self.module_source
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ArchitectureSpec:
        try:
            return cls(
                name=str(data["name"]),
                config=dict(data["config"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                import_path=data.get("import_path"),
                low_rank={str(k): int(v) for k, v in dict(data.get("low_rank") or {}).items()},
                module_source=_optional_str(data.get("module_source")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchitectureError(f"malformed architecture spec: {exc}") from exc

    @classmethod
    def zoo(
        cls,
        name: str,
        *,
        width: float = 1.0,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 8, 8),
    ) -> ArchitectureSpec:
        """The spec of a zoo architecture at a given width multiplier."""
        entry = ARCHITECTURES.get(name)
        if entry is None:
            known = ", ".join(sorted(ARCHITECTURES))
            raise ArchitectureError(f"unknown architecture {name!r} (known: {known})")
        if not 0.0 < width <= 4.0:
            raise ArchitectureError(f"width multiplier must be in (0, 4], got {width}")
        config = entry.config_for(name, width, num_classes, tuple(input_shape))
        return cls(name, config, tuple(input_shape))

    @classmethod
    def custom(
        cls, import_path: str, config: JSON, input_shape: tuple[int, ...]
    ) -> ArchitectureSpec:
        """A user's own ``nn.Module`` factory, addressed by ``module:attribute``."""
        return cls("custom", dict(config), tuple(input_shape), import_path=import_path)


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"module_source must be text, got {type(value).__name__}")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _import_factory(import_path: str) -> Callable[..., nn.Module]:
    module_name, sep, attr = import_path.partition(":")
    if not sep or not module_name or not attr:
        raise ArchitectureError(
            f"import path must look like 'package.module:Factory': {import_path!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(f"cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ArchitectureError(f"{import_path!r} is not a callable in {module_name!r}")
    return factory  # type: ignore[no-any-return]


def with_source(spec: ArchitectureSpec) -> ArchitectureSpec:
    """``spec`` with the text of its custom module, so rebuilds need no ``PYTHONPATH``.

    See :mod:`edgefleet.model_source` for why the text and why one file only.
    """
    if spec.name != "custom" or spec.import_path is None or spec.module_source is not None:
        return spec
    _import_factory(spec.import_path)  # a clear error if it does not import at all
    try:
        text = model_source.read_source(spec.import_path.partition(":")[0])
    except model_source.ModelSourceError as exc:
        raise ArchitectureError(str(exc)) from exc
    return replace(spec, module_source=text)


def _factory_from_source(spec: ArchitectureSpec) -> Callable[..., nn.Module]:
    """The factory in a custom spec's stored module source."""
    assert spec.module_source is not None and spec.import_path is not None
    original, _, attr = spec.import_path.partition(":")
    try:
        module = model_source.module_from_source(original, spec.module_source)
    except model_source.ModelSourceError as exc:
        raise ArchitectureError(str(exc)) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ArchitectureError(f"{spec.import_path!r} is not a callable in its stored source")
    return factory  # type: ignore[no-any-return]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def build_model(spec: ArchitectureSpec) -> nn.Module:
    """Construct an (untrained) network exactly as ``spec`` describes it, in eval mode.

    A custom spec with ``module_source`` runs that stored text; without it (before
    registration) the import path is imported from ``sys.path``.
    """
    if spec.name == "custom":
        if spec.import_path is None:
            raise ArchitectureError("custom architecture needs an import_path")
        if spec.module_source is not None:
            factory = _factory_from_source(spec)
        else:
            factory = _import_factory(spec.import_path)
        try:
            model = factory(**spec.config)
        except Exception as exc:  # the user's constructor: any error is a config problem
            raise ArchitectureError(
                f"{spec.import_path}(**{spec.config}) failed: {type(exc).__name__}: "
                f"{_first_line(exc)}"
            ) from exc
        if not isinstance(model, nn.Module):
            raise ArchitectureError(f"{spec.import_path!r} did not return an nn.Module")
    else:
        entry = ARCHITECTURES.get(spec.name)
        cls = entry.cls if entry is not None else LANGUAGE_MODELS.get(spec.name)
        if cls is None:
            raise ArchitectureError(f"unknown architecture {spec.name!r}")
        try:
            model = cls(**spec.config)
        except TypeError as exc:
            raise ArchitectureError(f"bad config for {spec.name!r}: {exc}") from exc
    if spec.low_rank:
        apply_low_rank_structure(model, spec.low_rank)
    return model.eval()


def architecture_of(model: nn.Module, template: ArchitectureSpec) -> ArchitectureSpec:
    """Read the spec back from a live module (after pruning or factorisation).

    Zoo modules report their own layer widths; custom modules keep the template's config
    (structured changes to custom models are refused by the compression stack for that reason).
    """
    config_fn = getattr(model, "config", None)
    config = config_fn() if template.name != "custom" and callable(config_fn) else template.config
    low_rank = {
        name: m.down.out_features if isinstance(m, LowRankLinear) else m.down.out_channels
        for name, m in model.named_modules()
        if isinstance(m, LowRankLinear | LowRankConv2d)
    }
    return ArchitectureSpec(
        template.name,
        config,
        template.input_shape,
        template.import_path,
        low_rank,
        template.module_source,
    )


def apply_low_rank_structure(model: nn.Module, ranks: Mapping[str, int]) -> None:
    """Replace the named Linear / Conv2d layers with (uninitialised) rank-``r`` pairs."""
    for name, rank in ranks.items():
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = parent.get_submodule(child)
        except AttributeError as exc:
            raise ArchitectureError(f"low-rank layer {name!r} not in model") from exc
        setattr(parent, child, _low_rank_twin(layer, rank, name))


def _low_rank_twin(layer: nn.Module, rank: int, name: str) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return LowRankLinear(layer.in_features, layer.out_features, rank, layer.bias is not None)
    if low_rank_compatible(layer):
        assert isinstance(layer, nn.Conv2d)
        return LowRankConv2d(
            layer.in_channels,
            layer.out_channels,
            rank,
            layer.bias is not None,
            _pair(layer.kernel_size),
            _pair(layer.stride),
            _pair(layer.padding),
        )
    raise ArchitectureError(f"low-rank: {name!r} is not a Linear or a dense Conv2d")


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, tuple | list) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise ArchitectureError(f"unsupported conv geometry {value!r}")


def low_rank_compatible(layer: nn.Module) -> bool:
    """Dense (groups=1), undilated, zero-padded convs with numeric padding can be split."""
    return (
        isinstance(layer, nn.Conv2d)
        and layer.groups == 1
        and layer.dilation == (1, 1)
        and layer.padding_mode == "zeros"
        and not isinstance(layer.padding, str)
    )


def load_state_dict_strict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a checkpoint, turning key or shape mismatches into one clear error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if wrong:
            parts.append(f"shape mismatch {wrong[:2]}{'...' if len(wrong) > 2 else ''}")
        raise CheckpointMismatchError("checkpoint does not match architecture: " + "; ".join(parts))
    model.load_state_dict(dict(state), strict=True)


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a user checkpoint (safetensors, or a weights-only torch file) into a flat state dict."""
    if not path.exists():
        raise CheckpointMismatchError(f"checkpoint not found: {path}")
    if path.suffix == ".pt2":  # torch.load would fail on it with a long unpickling error
        raise CheckpointMismatchError(
            f"{path} is an exported program (torch.export), not a checkpoint: save its weights "
            f"with torch.save(torch.export.load('{path}').state_dict, 'weights.pt') and give "
            "--checkpoint weights.pt with the module that defines the model"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointMismatchError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatchError(f"{path} is not a state dict of tensors")
    return {str(k): v for k, v in obj.items()}
