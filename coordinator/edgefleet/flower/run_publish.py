"""Register a finished run's weights as a model in the fleet's variant store, from the ServerApp.

Why here: over the API (issue 18) nothing else holds the final weights -- the CLI may be on a
laptop, the replica that accepted the run never imports torch, and the ServerApp is the process
that computed them. It registers ``MODEL-ft-RUN`` through the store interface
(:func:`edgefleet.coordinator.shared_store.open_store`): shared through the fleet's Redis when
the fleet has an external one (any replica then serves it), the accepting replica's data dir
with the embedded single-node Redis (the SuperLink runs on that host then). The base variant is
measured and signed with the fleet's key, like ``edgefleet models add``.

Registration failing never turns a succeeded run into a failed one: the record says what
happened (``registered_model`` or ``register_error``) and the weights stay in the run record.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

#: timed runs per latency measurement of the registered base (the CLI's default is 300; a
#: ServerApp should not hold its SuperLink slot for long, and `models build` re-measures)
LATENCY_RUNS = 30


def register_result(
    params: Mapping[str, npt.NDArray[np.float32]],
    arch: str,
    name: str,
    store_dir: str,
    store_redis: str,
    signing_key: str,
) -> dict[str, Any]:
    """``{"registered_model": name, "registered_base": id}`` or ``{"register_error": why}``."""
    try:
        base = _register(params, arch, name, store_dir, store_redis, signing_key)
    except Exception as exc:  # the run succeeded; say why its result is not registered
        log.exception("registering %s failed", name)
        return {"register_error": f"{type(exc).__name__}: {exc}"}
    return {"registered_model": name, "registered_base": base}


def open_result_store(store_dir: str, store_redis: str, signing_key: str, scratch: Path) -> Any:
    """The fleet's variant store as the run config names it (``scratch``: the local root when
    the store is shared through Redis and no data dir is named); also the LoRA run's
    (``flower.lora_run``), so only this module reaches the store interface."""
    from edgefleet.coordinator.shared_store import open_store

    return open_store(
        store_dir or scratch,
        store_redis or None,
        signing_key_path=Path(signing_key) if signing_key else None,
    )


def _register(
    params: Mapping[str, npt.NDArray[np.float32]],
    arch: str,
    name: str,
    store_dir: str,
    store_redis: str,
    signing_key: str,
) -> str:
    import torch
    from safetensors.torch import save_file

    from edgefleet.coordinator.shared_store import open_store
    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.build import BuildOptions, register_model
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.zoo import ArchitectureSpec, build_model

    spec = ArchitectureSpec(arch, fl_model.arch_config(arch, 1.0), fl_model.INPUT_SHAPE)
    ref = build_model(spec).state_dict()
    # the record keeps every tensor as float32 (BatchNorm's step counter too): cast back
    tensors = {k: torch.from_numpy(np.array(v)).to(ref[k].dtype) for k, v in params.items()}
    with tempfile.TemporaryDirectory(prefix="edgefleet-ft-") as tmp:
        checkpoint = Path(tmp) / "final.safetensors"
        save_file(tensors, str(checkpoint))
        store = open_store(
            store_dir or Path(tmp) / "store",
            store_redis or None,
            signing_key_path=Path(signing_key) if signing_key else None,
        )
        options = BuildOptions(latency=LatencyConfig(warmup=5, runs=LATENCY_RUNS))
        entry = register_model(store, name, spec, "digits", checkpoint=checkpoint, options=options)
    return entry.base
