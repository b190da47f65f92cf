"""LoRA adapters deployed as a small delta on the LM variant each device already holds.

A federated LoRA run (:mod:`edgefleet.modelops.lm_lora`) ends with rank-``r`` adapters for a
registered byte-lm. Merging them into the base changes every targeted weight, so a merged int4
variant shares no weight byte with the int4 variant a device holds: it ships whole. Here each
of the base model's variants (fp32, fp16, int8, int4-gN) gets an **adapter variant** instead:
the variant's own graph with an *unmerged* LoRA branch beside every targeted weight MatMul,

    y = base(x) + pad((x @ A^T) @ (scale * B)^T)      (one branch per targeted row slice)

so the base's (quantized) weights are untouched: an int4 device keeps its int4 base and adds a
few float adapters. The branch runs in the graph's activation dtype (fp16 for the fp16 graph,
fp32 next to weight-only ``MatMulNBits``, whose activations are fp32).

Layout, and why it makes the delta small: LM bundles keep their weights as ONNX external data
(:func:`edgefleet.modelops.lm_bundle.lm_bundle_files`: ``model.onnx`` = the graph and small
tensors, ``model.onnx.data`` = the weights). The adapter graph is built from the base's
``model.onnx`` *without* loading its external data, so every base tensor keeps its exact
location, offset and length, the adapters are small inline initializers of the new graph, and
the adapter variant's ``model.onnx.data`` is the base's byte for byte. The signed delta
(:mod:`edgefleet.delta`) then ships ``same`` for the weights and the new small graph as a
``file``: adapter bytes plus the graph. A base registered before this layout (one inline
``model.onnx``) gets a one-file adapter variant the same way, and its delta finds the base's
tensors with the ``blocks`` copy program instead.

How a torch target is found in an ONNX graph: the exporter names weights ``val_N`` and the
quantizers rename nodes and weights (``..._Q4``), so names are no mapping. Structure is: in
graph order, the weight MatMuls (a ``MatMul`` whose B is an initializer, or a
``MatMulNBits``) of a byte-lm are each block's ``qkv, proj, up, down`` and then the head, and
each has a known ``(K, N)`` from the model's config. :func:`weight_matmuls` checks count and
every shape, and refuses the graph in one line when they do not match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.lora import LoRAConfig
from edgefleet.variant_store import ModelEntry, VariantStore

__all__ = ["AdapterVariantError", "build_adapter_variants"]


class AdapterVariantError(ValueError):
    """Adapters that do not fit the base model's graphs (one line, no traceback)."""


def build_adapter_variants(
    store: VariantStore,
    base_model: str,
    adapters: Mapping[str, npt.NDArray[np.float32]],
    lora: LoRAConfig,
    name: str,
    *,
    recipes: Sequence[str] | None = None,
    test: npt.NDArray[np.uint8] | None = None,
    measure: bool = True,
) -> ModelEntry:
    """Register model ``name`` (e.g. ``MODEL-ft-RUN``) whose variants are the adapter variants
    of registered LM ``base_model``'s variants (every one, or the ``recipes`` labels given).

    ``adapters`` are the run's averaged arrays named as :func:`edgefleet.lora.adapter_arrays`
    names them (``blocks.0.qkv.lora_a.q`` ...), ``lora`` its rank/alpha/targets. Each adapter
    variant keeps its base variant's recipe label, precision and cache geometry, records
    ``parent`` (the base variant id) and ``adapter`` (rank, alpha, targets, adapter bytes) in
    its manifest, and is measured like any LM variant (perplexity, bytes, tok/s, peak memory)
    on ``test`` or, when ``test`` is None and the base was measured, on the base's held-out
    text; ``measure=False`` skips measuring. :class:`AdapterVariantError` (one line) when the
    base is not a language model, an adapter does not match the config, or a target is not in
    a variant's graph.
    """
    raise NotImplementedError  # filled in below by h2


def _unused(_: Any) -> None:  # placeholder so the skeleton type-checks
    pass
