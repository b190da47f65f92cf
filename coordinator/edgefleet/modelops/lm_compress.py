"""LM variants with the field's tools: one KV-cache ONNX graph, then fp16 and weight-only int8/int4.

Why ONNX and onnxruntime's ``MatMulNBits`` rather than torch: it is the graph the agent already
serves, and ``MatMulNBitsQuantizer`` is what onnxruntime-genai ships for phones and Pis: each
weight ``MatMul`` becomes ``MatMulNBits`` holding 4- or 8-bit weights in blocks of ``group``
input channels with one fp32 scale per block (symmetric, round-to-nearest). Activations and the
KV cache stay float, so nothing needs calibration data and the embedding table (a ``Gather``) is
left fp32. fp16 converts every float tensor, the KV cache included (it halves the cache's bytes).

A ``+kv8`` recipe (``fp32+kv8``, ``int8+kv8``, ``int4-gN+kv8``) also gives the graph an int8
cache with one scale per token vector (:mod:`edgefleet.modelops.lm_kv8`: a quarter of fp32's
bytes plus 4 per head and layer): the cache, not the weights, is what grows with the context.
:data:`KV8_RECIPES` are the two worth measuring: ``fp32+kv8`` (the cache's own cost in
perplexity, against the same weights with a float cache) and ``int4-g32+kv8`` (the smallest
weights with the best int4 perplexity, what a device short of memory or bandwidth picks).
``int8+kv8`` builds when asked: onnxruntime's 8-bit ``MatMulNBits`` decodes slower than fp32
here, so no device picks int8 weights; ``fp16+kv8`` is refused (the fp16 converter would turn
the scales fp16 too, and an fp16 cache is half of fp32's already). ``models build`` builds a
``+kv8`` recipe when asked, not by default: the rewrite needs a real export's per-layer cache
reads, which a stand-in graph need not have.

The graph takes ``tokens (batch, new)``, ``past_k``/``past_v`` ``(layers, batch, heads, past,
head_dim)`` and returns next-byte logits and the grown caches: prefill is ``past = 0``, decode is
``new = 1``; one file serves both (see :class:`edgefleet.zoo.ByteLM`). A ``+kv8`` graph's
cache I/O differs: see :mod:`edgefleet.modelops.lm_kv8`.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from edgefleet.modelops.lm_kv8 import KV8_SUFFIX, int8_kv_cache, kv8_bytes_per_position
from edgefleet.modelops.onnx_export import OPSET, quiet_logger, strip_metadata
from edgefleet.zoo import ByteLM

__all__ = [
    "KV8_RECIPES",
    "LM_RECIPES",
    "LMVariantFile",
    "build_lm_variants",
    "derive_lm_variant",
    "export_lm_onnx",
    "kv8_recipe",
    "parse_lm_recipe",
]

INPUTS = ("tokens", "past_k", "past_v")
OUTPUTS = ("logits", "present_k", "present_v")
#: every recipe the LM path builds; ``int4-gN`` is 4-bit with groups of N input channels
LM_RECIPES = ("fp32", "fp16", "int8", "int4-g32", "int4-g64", "int4-g128")
#: the int8-KV-cache recipes :mod:`benchmarks.lm` measures (any ``+kv8`` recipe builds on request)
KV8_RECIPES = ("fp32+kv8", "int4-g32+kv8")
#: int8 weight-only group size (the llama.cpp Q8_0 convention)
INT8_GROUP = 32


@dataclass(frozen=True)
class LMVariantFile:
    """One built variant: its recipe, graph on disk and what it stores per weight."""

    recipe: str
    path: Path
    bits: int  # weight bits (32, 16, 8, 4)
    group: int  # 0: not group-wise
    kv_dtype_bytes: int  # bytes per KV-cache element this graph takes
    bytes: int

    @property
    def kv_dtype(self) -> str:
        """The manifest's ``language_model.kv_dtype``: float32, float16 or int8."""
        return {1: "int8", 2: "float16"}.get(self.kv_dtype_bytes, "float32")

    def kv_bytes_per_position(self, layers: int, heads: int, head_dim: int) -> int:
        """Keys and values of one position at batch 1 (an int8 cache's scales included)."""
        if self.kv_dtype_bytes == 1:
            return kv8_bytes_per_position(layers, heads, head_dim)
        return 2 * layers * heads * head_dim * self.kv_dtype_bytes


def kv8_recipe(recipe: str) -> tuple[str, bool]:
    """``(weight recipe, int8 cache?)``: ``int4-g32+kv8`` is ``("int4-g32", True)``."""
    if recipe.endswith(KV8_SUFFIX):
        return recipe[: -len(KV8_SUFFIX)], True
    return recipe, False


def parse_lm_recipe(recipe: str) -> tuple[int, int]:
    """``(bits, group)`` of a recipe's weights; one clear error for anything else."""
    weights, kv8 = kv8_recipe(recipe)
    if kv8 and weights == "fp16":
        raise ValueError(
            "fp16+kv8 is not built: an fp16 cache is half of fp32's already; "
            "use fp32+kv8, int8+kv8 or int4-gN+kv8"
        )
    return _parse_weights(weights, recipe)


def _parse_weights(weights: str, recipe: str) -> tuple[int, int]:
    if weights == "fp32":
        return 32, 0
    if weights == "fp16":
        return 16, 0
    if weights == "int8":
        return 8, INT8_GROUP
    head, _, group = weights.partition("-g")
    if head == "int4" and group.isdigit() and int(group) in (16, 32, 64, 128, 256):
        return 4, int(group)
    raise ValueError(
        f"unknown LM recipe {recipe!r}; choose from {', '.join(LM_RECIPES)} "
        "(int4 groups: 16, 32, 64, 128, 256; +kv8 after fp32, int8 or int4-gN: an int8 KV cache)"
    )


def export_lm_onnx(model: ByteLM) -> onnx.ModelProto:
    """The fp32 KV-cache graph, with dynamic batch, new-token and past lengths."""
    model = model.eval()
    heads, hd, layers = model.heads, model.head_dim, model.n_layers
    # sizes >= 2 in the example: torch.export specializes dimensions traced at 0 or 1
    example = (
        torch.zeros(2, 3, dtype=torch.long),
        torch.zeros(layers, 2, heads, 2, hd),
        torch.zeros(layers, 2, heads, 2, hd),
    )
    batch = torch.export.Dim("batch", min=1, max=256)
    new = torch.export.Dim("new", min=1, max=1 << 16)
    past = torch.export.Dim("past", min=0, max=1 << 16)
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        quiet_logger("torch.onnx"),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes=({0: batch, 1: new}, {1: batch, 3: past}, {1: batch, 3: past}),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    proto = strip_metadata(program.model_proto)
    onnx.checker.check_model(proto)
    return proto


def _weight_only(fp32: onnx.ModelProto, bits: int, group: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import (  # type: ignore[import-untyped]
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=group, is_symmetric=True, bits=bits)
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    with quiet_logger("onnxruntime.quantization.matmul_nbits_quantizer"):
        quantizer = MatMulNBitsQuantizer(
            model, bits=bits, block_size=group, is_symmetric=True, algo_config=config
        )
        quantizer.process()
    out: onnx.ModelProto = quantizer.model.model
    if not any(n.op_type == "MatMulNBits" for n in out.graph.node):
        raise RuntimeError(f"MatMulNBits quantizer left no {bits}-bit MatMul in the graph")
    return out


def _fp16(fp32: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import (  # type: ignore[import-untyped]
        convert_float_to_float16,
    )

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    out: onnx.ModelProto = convert_float_to_float16(model, keep_io_types=False)
    return out


def build_lm_variants(
    model: ByteLM, out_dir: Path, recipes: tuple[str, ...] = LM_RECIPES
) -> list[LMVariantFile]:
    """Export once, derive every recipe's graph, write ``<out_dir>/<recipe>.onnx``."""
    for r in recipes:  # every name checked before the export
        parse_lm_recipe(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_lm_onnx(model)
    return [derive_lm_variant(fp32, r, out_dir) for r in recipes]


def derive_lm_variant(fp32: onnx.ModelProto, recipe: str, out_dir: Path) -> LMVariantFile:
    """One recipe's graph from the fp32 KV-cache graph, written to ``<out_dir>/<recipe>.onnx``
    (also what ``models build`` does with a registered LM's base graph)."""
    bits, group = parse_lm_recipe(recipe)
    kv8 = kv8_recipe(recipe)[1]
    source = int8_kv_cache(fp32) if kv8 else fp32  # the cache first: MatMulNBits keeps it
    if bits == 32:
        graph = source
    elif bits == 16:
        graph = _fp16(source)
    else:
        graph = _weight_only(source, bits, group)
    path = out_dir / f"{recipe}.onnx"
    onnx.save(graph, str(path))
    kv = 1 if kv8 else 2 if bits == 16 else 4
    return LMVariantFile(recipe, path, bits, group, kv, path.stat().st_size)
