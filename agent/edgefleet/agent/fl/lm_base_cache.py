"""The device's cache of LoRA base LMs received by message: find, verify, store once.

Why: a federated LoRA run's adapters belong to one frozen base (``base_sha256`` in the run's
arch-config); a device on another host than the SuperLink holds no file at the run's
``base_path``. A device whose SuperNode has a cache directory (``lm-base-dir``, set by the
agent) says in its ``query`` reply whether it holds the run's base; the ServerApp then adds the
base's tensors to that device's first train message only, and this module writes them as
``<sha256>.safetensors``, so later rounds and later runs on the same base send nothing.

The digest is the run's own file digest: safetensors serialises a set of tensors to the same
bytes whatever order or library (torch or numpy) wrote them (header entries and data sorted,
no metadata; tests/test_lora_base_by_message.py checks it), so the device hashes the bytes it
would write and compares before anything reaches the disk. A base that does not match is one
error line and no file.

numpy, hashlib and safetensors' numpy half only: the ``query`` handler imports this in every
per-message ClientApp process, and torch must stay out of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from edgefleet.fl.contract import Node, TrainConfig
from edgefleet.fsutil import atomic_write

__all__ = ["BaseRejected", "base_file", "held", "store_base", "store_sent_base"]

HELD, MISSING = "held", "missing"


class BaseRejected(ValueError):
    """A base received by message that is not the run's: one line, nothing written."""


def _cache_dir(node_config: Mapping[str, Any]) -> Path | None:
    text = str(node_config.get(Node.LM_BASE_DIR, "") or "")
    return Path(text) if text else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_file(spec: Mapping[str, Any], node_config: Mapping[str, Any]) -> Path:
    """Where this device's base for ``spec`` is (it may not exist): its own ``lm-base-path``,
    else its cache's ``<sha256>.safetensors``, else the run's ``base_path`` (a loopback
    federation's nodes, which have no cache, share the SuperLink host's file)."""
    own = str(node_config.get(Node.LM_BASE_PATH, "") or "")
    if own:
        return Path(own)
    cache, digest = _cache_dir(node_config), str(spec.get("base_sha256", ""))
    if cache is not None and digest:
        return cache / f"{digest}.safetensors"
    return Path(str(spec.get("base_path", "") or ""))


def held(digest: str, node_config: Mapping[str, Any]) -> str | None:
    """The query's answer for the run's base ``digest``: ``held``/``missing``, or None for a
    device with no cache (it takes no base by message; its own paths decide at train time).

    A cache file that does not hash to its name (a torn or altered file) counts as missing,
    so the server sends the base again and :func:`store_base` replaces it."""
    cache = _cache_dir(node_config)
    if cache is None or not digest:
        return None
    path = base_file({"base_sha256": digest}, node_config)
    return HELD if path.is_file() and _sha256(path) == digest else MISSING


def store_base(
    record: ArrayRecord, spec: Mapping[str, Any], node_config: Mapping[str, Any]
) -> Path:
    """Verify the base tensors in ``record`` against the run's ``base_sha256`` and write them
    atomically into the device's cache; returns the file. Raises :class:`BaseRejected`."""
    from safetensors.numpy import save

    digest = str(spec.get("base_sha256", ""))
    cache = _cache_dir(node_config)
    if cache is None or not digest:
        raise BaseRejected("byte-lm-lora: a base was sent, but this device has no base cache")
    data = save({k: v.numpy() for k, v in record.items()})
    got = hashlib.sha256(data).hexdigest()
    if got != digest:
        raise BaseRejected(
            f"byte-lm-lora: the base sent is {got[:12]}, the run's adapters belong to "
            f"{digest[:12]}; not stored"
        )
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{digest}.safetensors"
    atomic_write(path, data)
    return path


def store_sent_base(
    record: ArrayRecord, cfg: Mapping[str, Any], node_config: Mapping[str, Any]
) -> Path:
    """:func:`store_base` for a message's config record (its ``arch-config`` names the base)."""
    try:
        spec = json.loads(str(cfg.get(TrainConfig.ARCH_CONFIG, "{}")))
    except ValueError:
        spec = None
    return store_base(record, spec if isinstance(spec, dict) else {}, node_config)
