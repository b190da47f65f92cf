"""A federated LoRA run submitted over the API: the ServerApp prepares the base, then publishes.

Why here, in the ServerApp: over the API (issue 18) the replica that accepts a run imports no
torch and the CLI may be on a laptop, so neither can recover the registered LM's base weights
nor write the initial adapters; the ServerApp runs on the SuperLink's host with the model ops,
like :mod:`edgefleet.flower.run_publish` for a classifier's result. The run config then names
the model only (``arch-config`` = ``{"model", "lora", "steps"}``, from
:mod:`edgefleet.coordinator.fl.runs`); :func:`prepare` opens the fleet's variant store, recovers
the base from its signed fp32 graph (:func:`edgefleet.modelops.lm_lora.load_lm_base`), writes
it and the initial adapters on this host and fills in ``base_path``/``base_sha256``, which the
devices' ClientApps check (a device on another host holds the same file at its
``lm-base-path``). :func:`register_lora` registers the averaged adapters as ``MODEL-ft-RUN``
(adapter variants of the base's own variants, else merged; ``lm_lora.publish_lora_result``).
A run whose config already names its base (the CLI's ``--local``/``--superlink`` path) is left
as it is.

A device on another host holds no file at ``base_path``: :class:`BaseSender` asks in the query
(:func:`query_content`) and adds the base's tensors (record ``lm-base``) to the first train
message of each device whose cache lacks it (``edgefleet.agent.fl.lm_base_cache`` verifies and
keeps it), so the base travels once per device, never again for later rounds or runs. The
query also sizes the model, so a device whose memory cannot train it says so and is left out
of the run before any base is sent (``edgefleet.agent.fl.lora_fit``).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from edgefleet.fl.contract import LM_BASE_NEEDED, LORA_ARCH, Record
from edgefleet.fl.redis_secret import with_credentials
from edgefleet.flower.run_settings import RunSettings

__all__ = [
    "LORA_ARCH", "BaseSender", "needs_preparing", "prepare", "query_content", "register_lora",
]  # fmt: skip

log = logging.getLogger(__name__)


def needs_preparing(settings: RunSettings) -> bool:
    """A LoRA run that names a registered LM but not yet its base."""
    if settings.arch != LORA_ARCH:
        return False
    spec = _spec(settings)
    return bool(spec.get("model")) and not spec.get("base_sha256")


def _spec(settings: RunSettings) -> dict[str, Any]:
    try:
        spec = json.loads(settings.arch_config or "{}")
    except ValueError:
        raise ValueError("byte-lm-lora: arch-config is not JSON") from None
    if not isinstance(spec, dict):
        raise ValueError("byte-lm-lora: arch-config is not an object")
    return spec


def _work_dir(settings: RunSettings) -> Path:
    """Where the base and the initial adapters live for the run, on the SuperLink's host."""
    root = Path(settings.store_dir) if settings.store_dir else Path(tempfile.gettempdir())
    return root / "fl-lora" / (settings.run_name or f"run-{os.getpid()}")


def _store(settings: RunSettings, scratch: Path) -> Any:
    from edgefleet.flower.run_publish import open_result_store

    return open_result_store(
        settings.store_dir,
        with_credentials(settings.store_redis, os.environ),
        settings.signing_key,
        scratch,
    )


def prepare(settings: RunSettings) -> None:
    """Recover the base of ``arch-config``'s model and write it and the initial adapters;
    ``settings`` then names them (``arch_config``, ``init_path``). Raises with one line."""
    from edgefleet.lora import LoRAConfig
    from edgefleet.modelops.lm_lora import load_lm_base, prepare_lora_run

    spec = _spec(settings)
    work = _work_dir(settings)
    store = _store(settings, work / "store")
    entry = store.model(str(spec["model"]))
    base = load_lm_base(store, entry)
    lora = LoRAConfig.from_json(spec.get("lora") or {})
    run = prepare_lora_run(base, lora, work, steps=int(spec.get("steps", 20)))
    settings.arch_config = json.dumps({**run.arch_config, "model": entry.name}, sort_keys=True)
    settings.init_path = str(run.init_path)
    log.info("LoRA base of %s at %s (%s)", entry.name, run.base_path, run.base_sha256[:12])


def _sizes(spec: Mapping[str, Any], init_path: str) -> dict[str, int | str]:
    """``weights``/``adapters``/``base`` for the query, so each device can tell whether a
    training step fits its budget (``edgefleet.agent.fl.lora_fit``); empty if unknown.

    The base's parameter count comes from its safetensors header (8-byte length, JSON of
    shapes): the base is not loaded to size it."""
    try:
        with open(str(spec.get("base_path", "")), "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        frozen = sum(int(np.prod(v["shape"])) for k, v in header.items() if k != "__metadata__")
        with np.load(init_path) as z:
            adapters = sum(int(np.prod(z[k].shape)) for k in z.files)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        log.warning("byte-lm-lora: cannot size the run for the devices' memory check: %s", exc)
        return {}
    return {
        "weights": frozen + adapters, "adapters": adapters,
        "base": json.dumps(spec.get("base") or {}, sort_keys=True),
    }  # fmt: skip


def query_content(settings: RunSettings) -> RecordDict:
    """The query's content: for a LoRA run, the base's sha256, so each device with a base cache
    says whether it holds it (``lm-base-state``), and the model's sizes, so a device that
    cannot train it says so (``lm-lora-unfit``) before any base travels; empty for any other
    run."""
    spec = _spec(settings) if settings.arch == LORA_ARCH else {}
    digest = str(spec.get("base_sha256", ""))
    if not digest:
        return RecordDict()
    asked = ConfigRecord({"sha256": digest, **_sizes(spec, settings.init_path)})
    return RecordDict({Record.LM_BASE: asked})


class BaseSender:
    """Adds the run's base to the messages of the devices that said they lack it: once per
    device and run. A device whose round then failed for another reason (its shard, its
    memory, a lost reply) holds the base all the same and is not sent it again; only one whose
    error says it still lacks it (``LM_BASE_NEEDED``: the base did not match, or never arrived)
    gets it again next time."""

    def __init__(self, settings: RunSettings, lacking: Iterable[int]) -> None:
        self.settings = settings
        self.lacking = set(lacking)
        self.sent: set[int] = set()  # devices sent the base this run
        self._record: ArrayRecord | None = None

    def _base(self) -> ArrayRecord:
        if self._record is None:
            from safetensors.numpy import load_file

            path = str(_spec(self.settings).get("base_path", ""))
            try:
                tensors = load_file(path)
            except Exception as exc:  # OSError, safetensors' own error: one line for the run
                raise ValueError(
                    f"byte-lm-lora: cannot read the run's base at {path}: {exc}"
                ) from None
            self._record = ArrayRecord({k: Array(v) for k, v in sorted(tensors.items())})
        return self._record

    def attach(self, messages: Iterable[Message]) -> dict[int, int]:
        """Put the base in the messages to lacking devices; ``{node id: base bytes}``."""
        sent: dict[int, int] = {}
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node in self.lacking:  # its own content: Flower's strategies share one
                content = RecordDict(dict(msg.content.items()))
                content[Record.LM_BASE] = self._base()
                msg.content = content
                sent[node] = sum(len(a.data) for a in self._base().values())
                self.lacking.discard(node)
                self.sent.add(node)
        return sent

    def delivered(self, replies: Iterable[Message]) -> None:
        """Devices sent the base whose error says they still lack it get it again."""
        for r in replies:
            node = r.metadata.src_node_id
            if node in self.sent and r.has_error() and LM_BASE_NEEDED in str(r.error.reason):
                self.lacking.add(node)


def register_lora(
    params: Mapping[str, npt.NDArray[np.float32]], settings: RunSettings
) -> dict[str, Any]:
    """``{"registered_model", "registered_base", "registered_as"}`` or ``{"register_error"}``:
    registration failing never fails a run that succeeded."""
    try:
        from edgefleet.lora import LoRAConfig
        from edgefleet.modelops.lm_lora import load_lm_base, publish_lora_result

        spec = _spec(settings)
        work = _work_dir(settings)
        store = _store(settings, work / "store")
        entry = store.model(str(spec["model"]))
        lora = LoRAConfig.from_json(spec.get("lora") or {})
        adapters = {k: np.asarray(v, np.float32) for k, v in params.items()}
        done = publish_lora_result(
            store, entry, load_lm_base(store, entry), lora, adapters, settings.register_model,
            work,
        )  # fmt: skip
    except Exception as exc:
        log.exception("registering %s failed", settings.register_model)
        return {"register_error": f"{type(exc).__name__}: {exc}"}
    return {
        "registered_model": done["model"], "registered_base": done["base"],
        "registered_as": done["as"],
    }  # fmt: skip
