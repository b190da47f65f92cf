"""The coordinator's half of federated LoRA: prepare a run, then merge and export its result.

A federated LoRA run (``arch = byte-lm-lora``) is an ordinary run of our ServerApp: its
``init-path`` holds the *adapters* (:func:`prepare_lora_run` writes them, seeded, B = 0 so round
1 starts from the base model exactly), its ``arch-config`` tells each device which base they
belong to (the base's sha256; the device checks it) and how to train (rank, alpha, targets,
steps), and Flower's FedAvg averages the adapters the devices send back. Nothing else travels:
:func:`wire_bytes` says what a round moves per device and what the full model would.

After the run, :func:`merge_adapters` folds the averaged adapters into the base and
:func:`export_merged` writes the merged LM through the same ONNX export and weight-only
quantizers every LM variant uses (:mod:`edgefleet.modelops.lm_compress`): a new LM variant
that any device serving byte-lm can run, with nothing LoRA-specific left in the graph.

``edgefleet train start LM`` (a *registered* LM) needs the base as torch weights, and a
registered LM holds signed ONNX graphs only: :func:`load_lm_base` recovers the weights from
its fp32 graph by structure (see there) and proves the recovery by running both.
:func:`publish_lora_result` registers the run's result as ``LM-ft-RUN``: as adapter variants
of the base's own variants (``lm_adapter_variant``) when that path is available, else as the
merged export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import save_file

from edgefleet.fl.contract import LORA_ARCH
from edgefleet.flower import model as fl_model
from edgefleet.lora import LoRAConfig, adapter_arrays, add_lora, load_adapter_arrays, merge_lora
from edgefleet.modelops.lm_compress import LMVariantFile, build_lm_variants
from edgefleet.variant_store import ModelEntry, VariantStore
from edgefleet.zoo import ByteLM, load_state_dict_strict

__all__ = [
    "LORA_ARCH",
    "LMBaseError",
    "LoRARun",
    "export_merged",
    "is_registered_lm",
    "load_lm_base",
    "merge_adapters",
    "prepare_lora_run",
    "publish_lora_result",
    "record_bytes",
    "wire_bytes",
]

#: recovered weights must reproduce the signed graph's logits to this (float32 round-off)
RECOVERY_TOLERANCE = 1e-3


class LMBaseError(ValueError):
    """A registered model that cannot be a LoRA run's base (one line, no traceback)."""


@dataclass(frozen=True)
class LoRARun:
    """What a federated LoRA run is started with (its ServerApp run config, in part)."""

    base_path: Path
    base_sha256: str
    init_path: Path
    arch_config: dict[str, Any]
    adapter_params: int
    model_params: int

    def run_config(self) -> dict[str, object]:
        """The run-config keys that make our ServerApp run LoRA rounds."""
        return {
            "arch": LORA_ARCH,
            "arch-config": json.dumps(self.arch_config, sort_keys=True),
            "init-path": str(self.init_path),
            "test-path": "",  # perplexity is scored on the devices' own held-out text
        }


def prepare_lora_run(
    model: ByteLM,
    lora: LoRAConfig,
    out_dir: Path,
    *,
    steps: int = 20,
    eval_bytes: int = 16384,
    seed: int = 0,
) -> LoRARun:
    """Write the frozen base (safetensors) and the initial adapters (the run's ``init-path``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base_path = out_dir / "base.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(base_path))
    digest = hashlib.sha256(base_path.read_bytes()).hexdigest()
    adapted = add_lora(copy.deepcopy(model), lora, seed=seed)
    init = adapter_arrays(adapted)
    init_path = fl_model.save_params(init, out_dir / "adapters-init.npz")
    arch_config = {
        "base": model.config(),
        "lora": lora.to_json(),
        "base_path": str(base_path),
        "base_sha256": digest,
        "steps": steps,
        "eval_bytes": eval_bytes,
    }
    return LoRARun(
        base_path,
        digest,
        init_path,
        arch_config,
        adapter_params=sum(int(v.size) for v in init.values()),
        model_params=sum(int(v.numel()) for v in model.state_dict().values()),
    )


def record_bytes(arrays: Mapping[str, npt.NDArray[Any]]) -> int:
    """Bytes of ``arrays`` serialized as a Flower ArrayRecord's payload (what a message moves,
    each tensor with its small ``.npy`` header; the ServerApp's ``bytes_up`` counts the same)."""
    from flwr.app import Array

    return sum(len(Array(np.ascontiguousarray(v)).data) for v in arrays.values())


def wire_bytes(run: LoRARun, model: ByteLM) -> dict[str, int]:
    """Bytes one device receives (and sends) per round: the adapters vs the whole model."""
    adapters = fl_model.load_params(run.init_path)
    full = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return {"adapters": record_bytes(adapters), "full_model": record_bytes(full)}


def merge_adapters(
    model: ByteLM, lora: LoRAConfig, adapters: dict[str, npt.NDArray[np.float32]]
) -> ByteLM:
    """The base with the run's adapters folded in: a plain ByteLM (the base is not changed)."""
    adapted = add_lora(copy.deepcopy(model), lora)
    load_adapter_arrays(adapted, adapters)
    return merge_lora(adapted)


def export_merged(
    merged: ByteLM, out_dir: Path, recipes: tuple[str, ...] = ("fp32", "int8")
) -> list[LMVariantFile]:
    """The merged LM's variant graphs, exactly as any byte-lm's (ONNX + weight-only quant)."""
    return build_lm_variants(merged, out_dir, recipes)


def is_registered_lm(entry: ModelEntry) -> bool:
    """Whether ``entry`` is a byte-lm (what :func:`edgefleet.modelops.lm_bundle.register_lm_model`
    registers), read from its entry alone (no bundle loaded)."""
    arch = entry.architecture
    return str(arch.get("arch") or arch.get("name") or "") == "byte-lm"


def load_lm_base(store: VariantStore, entry: ModelEntry) -> ByteLM:
    """Registered LM ``entry``'s base as a torch ByteLM, recovered from its signed fp32 graph.

    Why from the graph: a registered LM's bundles hold ONNX only (what devices run), and the
    graph *is* the model the fleet signed. The exporter renames transposed weights (``val_N``),
    so names are no mapping; structure is: in graph order the embedding is the one ``Gather`` of
    a ``(vocab, dim)`` table, the RMSNorm scales are the ``Mul`` s by a ``(dim,)`` initializer
    (each block's two, then the final one) and the weight ``MatMul`` s are each block's ``qkv,
    proj, up, down`` and then the head, stored ``(in, out)`` (transposed from torch's). Every
    count and shape is checked, and the recovered model must reproduce the graph's logits on a
    probe (onnxruntime): a layout this does not know is refused in one line, never guessed.
    """
    if not is_registered_lm(entry):
        raise LMBaseError(f"model {entry.name!r} is not a byte-lm language model")
    bundle = store.load(entry.base)
    if bundle.manifest.get("recipe_label") != "fp32":
        raise LMBaseError(
            f"model {entry.name!r}: its base variant is {bundle.manifest.get('recipe_label')!r}, "
            "and LoRA needs the fp32 graph to recover the base weights from"
        )
    config = dict(bundle.manifest.get("architecture", {}).get("config") or {})
    model = ByteLM(**config).eval()
    with tempfile.TemporaryDirectory(prefix="edgefleet-lm-") as tmp:
        for name, data in bundle.files.items():  # the graph and any external weight data
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        graph = Path(tmp) / "model.onnx"
        state = _state_from_graph(entry.name, graph, model)
        load_state_dict_strict(model, state)
        _check_recovery(entry.name, graph, model)
    return model


def _state_from_graph(name: str, graph: Path, model: ByteLM) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(graph))
    inits = {i.name: i for i in proto.graph.initializer}
    d, hidden = model.dim, model.dim * model.mlp_ratio
    gathers: list[npt.NDArray[Any]] = []
    norms: list[npt.NDArray[Any]] = []
    matmuls: list[npt.NDArray[Any]] = []
    for node in proto.graph.node:
        held = [numpy_helper.to_array(inits[x]) for x in node.input if x in inits]
        if node.op_type == "Gather":
            gathers += [a for a in held if a.shape == (model.vocab, d)]
        elif node.op_type == "Mul":
            norms += [a for a in held if a.shape == (d,)]
        elif node.op_type == "MatMul":
            matmuls += [a for a in held if a.ndim == 2]
    want = [(d, 3 * d), (d, d), (d, hidden), (hidden, d)] * model.n_layers + [(d, model.vocab)]
    shapes = [tuple(m.shape) for m in matmuls]
    if len(gathers) != 1 or len(norms) != 2 * model.n_layers + 1 or shapes != want:
        raise LMBaseError(
            f"model {name!r}: its fp32 graph is not a byte-lm export this version can read "
            f"(1 embedding, {2 * model.n_layers + 1} norms, {len(want)} weight MatMuls expected; "
            f"found {len(gathers)}, {len(norms)}, {len(matmuls)})"
        )
    state = {"embed.weight": gathers[0], "norm.weight": norms[-1], "head.weight": matmuls[-1].T}
    for i in range(model.n_layers):
        qkv, proj, up, down = matmuls[4 * i : 4 * i + 4]
        state.update({
            f"blocks.{i}.norm1.weight": norms[2 * i], f"blocks.{i}.norm2.weight": norms[2 * i + 1],
            f"blocks.{i}.qkv.weight": qkv.T, f"blocks.{i}.proj.weight": proj.T,
            f"blocks.{i}.up.weight": up.T, f"blocks.{i}.down.weight": down.T,
        })  # fmt: skip
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}


def _check_recovery(name: str, graph: Path, model: ByteLM) -> None:
    """The recovered weights compute what the signed graph computes, or a one-line refusal."""
    from edgefleet.modelops.lm_measure import session

    sess = session(graph)
    tokens = np.random.default_rng(0).integers(0, model.vocab, size=(1, 16), dtype=np.int64)
    empty = np.zeros((model.n_layers, 1, model.heads, 0, model.head_dim), np.float32)
    want = sess.run(["logits"], {"tokens": tokens, "past_k": empty, "past_v": empty})[0]
    with torch.no_grad():
        pk, pv = model.empty_cache(1)
        got, _, _ = model(torch.from_numpy(tokens), pk, pv)
    err = float(np.abs(got.numpy() - want).max())
    if not err <= RECOVERY_TOLERANCE:
        raise LMBaseError(
            f"model {name!r}: weights recovered from its fp32 graph do not reproduce it "
            f"(max logit difference {err:.3g}); it cannot be a LoRA base"
        )


def publish_lora_result(
    store: VariantStore,
    base_entry: ModelEntry,
    base: ByteLM,
    lora: LoRAConfig,
    adapters: dict[str, npt.NDArray[np.float32]],
    name: str,
    work_dir: Path,
) -> dict[str, Any]:
    """Register the run's adapters as model ``name``; say how (``"as"``) and what was made.

    Adapter variants of the base's own variants when :mod:`edgefleet.modelops.lm_adapter_variant`
    is available (each device then receives a small delta on the variant it holds), else the
    adapters merged into the base and exported as fp32 and int8 LM variants (whole bundles).
    """
    try:
        from edgefleet.modelops.lm_adapter_variant import build_adapter_variants
    except ImportError:
        build_adapter_variants = None  # type: ignore[assignment]
    if build_adapter_variants is not None:
        try:
            entry = build_adapter_variants(store, base_entry.name, adapters, lora, name)
        except NotImplementedError:
            pass  # the adapter-variant path is not built yet: the merged export below
        else:
            return _published(store, entry, "adapter-variants")
    from edgefleet.modelops.lm_bundle import register_lm_model

    merged = merge_adapters(base, lora, adapters)
    exported = export_merged(merged, work_dir / "merged")
    entry = register_lm_model(store, name, merged, exported, dataset=base_entry.dataset)
    return _published(store, entry, "merged")


def _published(store: VariantStore, entry: ModelEntry, how: str) -> dict[str, Any]:
    recipes = [
        str(store.load(v).manifest.get("recipe_label") or "") for v in [entry.base, *entry.variants]
    ]
    return {
        "model": entry.name, "base": entry.base, "as": how,
        "variants": [{"recipe": r, "id": v} for r, v in zip(recipes, [entry.base, *entry.variants], strict=True)],
    }  # fmt: skip
