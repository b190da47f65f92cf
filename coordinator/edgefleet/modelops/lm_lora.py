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
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.torch import save_file

from edgefleet.fl.contract import LORA_ARCH
from edgefleet.flower import model as fl_model
from edgefleet.lora import LoRAConfig, adapter_arrays, add_lora, load_adapter_arrays, merge_lora
from edgefleet.modelops.lm_compress import LMVariantFile, build_lm_variants
from edgefleet.zoo import ByteLM

__all__ = [
    "LORA_ARCH",
    "LoRARun",
    "export_merged",
    "merge_adapters",
    "prepare_lora_run",
    "record_bytes",
    "wire_bytes",
]


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
