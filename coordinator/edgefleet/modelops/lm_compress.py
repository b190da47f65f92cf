"""LM variants with the field's tools: one KV-cache ONNX graph, then fp16 and weight-only int8/int4.

Why ONNX and onnxruntime's ``MatMulNBits`` rather than torch: it is the graph the agent already
serves, and ``MatMulNBitsQuantizer`` is what onnxruntime-genai ships for phones and Pis: each
weight ``MatMul`` becomes ``MatMulNBits`` holding 4- or 8-bit weights in blocks of ``group``
input channels with one fp32 scale per block (symmetric, round-to-nearest). Activations and the
KV cache stay float, so nothing needs calibration data and the embedding table (a ``Gather``) is
left fp32. fp16 converts every float tensor, the KV cache included (it halves the cache's bytes).

The graph takes ``tokens (batch, new)``, ``past_k``/``past_v`` ``(layers, batch, heads, past,
head_dim)`` and returns next-byte logits and the grown caches: prefill is ``past = 0``, decode is
``new = 1``; one file serves both (see :class:`edgefleet.zoo.ByteLM`).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from edgefleet.modelops.onnx_export import OPSET, quiet_logger, strip_metadata
from edgefleet.zoo import ByteLM

__all__ = [
    "LM_RECIPES",
    "LMVariantFile",
    "build_lm_variants",
    "derive_lm_variant",
    "export_lm_onnx",
    "parse_lm_recipe",
]

INPUTS = ("tokens", "past_k", "past_v")
OUTPUTS = ("logits", "present_k", "present_v")
#: every recipe the LM path builds; ``int4-gN`` is 4-bit with groups of N input channels
LM_RECIPES = ("fp32", "fp16", "int8", "int4-g32", "int4-g64", "int4-g128")
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


def parse_lm_recipe(recipe: str) -> tuple[int, int]:
    """``(bits, group)`` of a recipe name; one clear error for anything else."""
    if recipe == "fp32":
        return 32, 0
    if recipe == "fp16":
        return 16, 0
    if recipe == "int8":
        return 8, INT8_GROUP
    head, _, group = recipe.partition("-g")
    if head == "int4" and group.isdigit() and int(group) in (16, 32, 64, 128, 256):
        return 4, int(group)
    raise ValueError(
        f"unknown LM recipe {recipe!r}; choose from {', '.join(LM_RECIPES)} "
        "(int4 groups: 16, 32, 64, 128, 256)"
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
    if bits == 32:
        graph = fp32
    elif bits == 16:
        graph = _fp16(fp32)
    else:
        graph = _weight_only(fp32, bits, group)
    path = out_dir / f"{recipe}.onnx"
    onnx.save(graph, str(path))
    kv = 2 if bits == 16 else 4
    return LMVariantFile(recipe, path, bits, group, kv, path.stat().st_size)
