"""The device's cache of LoRA base LMs received by message: find, verify, store once.

Why: a federated LoRA run's adapters belong to one frozen base (``base_sha256`` in the run's
arch-config); a device on another host than the SuperLink holds no file at the run's
``base_path``. A device whose SuperNode has a cache directory (``lm-base-dir``, set by the
agent) says in its ``query`` reply whether it holds the run's base; the ServerApp then adds the
base's tensors to that device's first train message only, and this module writes them as
``<sha256>.safetensors``, so later rounds and later runs on the same base send nothing.

The digest is the run's own file digest: safetensors serialises a set of tensors to the same
bytes whatever order or library (torch or numpy) wrote them (header entries and data sorted,
no metadata; tests/test_lora_base_by_message.py checks it), so the device writes the tensors
to a temporary file, hashes it and gives it its name only when the digest matches. A base that
does not match is one error line and no file.

Memory: a base is the largest thing a device receives (~270 MB for a 135M-parameter model
in 16-bit weights). The message already holds its bytes once; the tensors are read as
views into those bytes (:func:`_view`, no copy) and safetensors writes them to the file from
those pointers, so storing adds no copy of the base -- decoding every array
(``Array.numpy()``) and serialising to one ``bytes`` object first held two more.

Checking a held base is cheap: :func:`store_base` writes a stamp beside the verified file
(``<sha256>.safetensors.stamp``: its digest, size, ``st_mtime_ns`` and ``st_ino``), and
:func:`file_digest` believes the stamp while ``os.stat`` still says the same. What the hash
guards against -- a torn or interrupted write, a file replaced or edited -- changes the size,
the mtime or (an atomic replace) the inode, so the stamp sees it and the file is hashed again;
hashing a 270 MB base on every query costs a Pi seconds of CPU each round. What a stamp cannot
see is an edit that keeps size, mtime and inode (a deliberate ``touch -d`` back, bit rot): the
cache guards against accidents, not against whoever can write the device's disk.

numpy, hashlib and safetensors' numpy half only: the ``query`` handler imports this in every
per-message ClientApp process, and torch must stay out of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from edgefleet.fl.contract import LM_BASE_NEEDED, Node, TrainConfig
from edgefleet.fsutil import atomic_replace, atomic_write

__all__ = [
    "BaseRejected", "base_digest", "base_file", "file_digest", "held", "store_base",
    "store_sent_base",
]  # fmt: skip

HELD, MISSING = "held", "missing"

#: the run's context-state record of stamps for bases outside the cache (``lm-base-path``, a
#: loopback run's ``base_path``): files that are not ours to write a stamp beside
STAMP_STATE = "lm-base-stamps"


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


def _stat(path: Path) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".stamp")


def _load_stamp(path: Path, state: RecordDict | None) -> dict[str, Any] | None:
    if state is None:
        try:
            text: object = _sidecar(path).read_text()
        except OSError:
            return None
    else:
        record = state.config_records.get(STAMP_STATE)
        text = record.get(str(path)) if record is not None else None
    try:
        stamp = json.loads(str(text)) if text is not None else None
    except ValueError:  # a torn stamp vouches for nothing: the file is hashed again
        return None
    return stamp if isinstance(stamp, dict) else None


def _save_stamp(path: Path, stamp: dict[str, Any], state: RecordDict | None) -> None:
    text = json.dumps(stamp, sort_keys=True)
    if state is None:
        with contextlib.suppress(OSError):  # a read-only cache still answers, by hashing
            atomic_write(_sidecar(path), text)
        return
    record = state.config_records.get(STAMP_STATE) or ConfigRecord()
    record[str(path)] = text
    state.config_records[STAMP_STATE] = record


def file_digest(path: Path, state: RecordDict | None = None) -> str:
    """The sha256 of ``path``, hashed only when no stamp vouches for the file as it is now.

    The stamp lives beside the file (``state`` None: a cache file, ours to stamp) or in the
    run's context ``state`` (a device's own file), which the SuperNode keeps between the run's
    messages, so such a file is hashed once per run instead of every round. A file that
    changes while it is hashed gets no stamp. Raises OSError when ``path`` cannot be read."""
    now = _stat(path)
    stamp = _load_stamp(path, state)
    vouched = stamp is not None and all(stamp.get(k) == v for k, v in now.items())
    if stamp is not None and vouched and isinstance(stamp.get("sha256"), str):
        return str(stamp["sha256"])
    digest = _sha256(path)
    if _stat(path) == now:
        _save_stamp(path, {**now, "sha256": digest}, state)
    return digest


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


def held(
    digest: str, node_config: Mapping[str, Any], state: RecordDict | None = None
) -> str | None:
    """The query's answer for the run's base ``digest``: ``held``/``missing``, or None for a
    device with no cache (it takes no base by message; its own paths decide at train time).

    A cache file that does not hash to its name (a torn or altered file) counts as missing,
    so the server sends the base again and :func:`store_base` replaces it; a file its stamp
    still vouches for is not read at all (:func:`base_digest`)."""
    if _cache_dir(node_config) is None or not digest:
        return None
    path = base_file({"base_sha256": digest}, node_config)
    try:
        return (
            HELD if path.is_file() and base_digest(path, node_config, state) == digest else MISSING
        )
    except OSError:  # unreadable: as good as missing, and store_base replaces it
        return MISSING


def base_digest(path: Path, node_config: Mapping[str, Any], state: RecordDict | None) -> str:
    """:func:`file_digest` of a base file: stamped beside it when it is in the device's cache
    (our file), in the run's context ``state`` otherwise (a file we must not write beside)."""
    cache = _cache_dir(node_config)
    if cache is not None and path.parent == cache:
        return file_digest(path)
    return file_digest(path, state) if state is not None else _sha256(path)


def store_base(
    record: ArrayRecord, spec: Mapping[str, Any], node_config: Mapping[str, Any]
) -> Path:
    """Verify the base tensors in ``record`` against the run's ``base_sha256`` and write them
    atomically into the device's cache; returns the file. Raises :class:`BaseRejected`."""
    from safetensors.numpy import save_file

    digest = str(spec.get("base_sha256", ""))
    cache = _cache_dir(node_config)
    if cache is None or not digest:
        raise BaseRejected("byte-lm-lora: a base was sent, but this device has no base cache")
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{digest}.safetensors"
    with atomic_replace(path) as tmp:
        save_file({k: _view(v) for k, v in record.items()}, str(tmp))
        got = _sha256(tmp)
        if got != digest:
            raise BaseRejected(
                f"byte-lm-lora: the base sent is {got[:12]}, the run's adapters belong to "
                f"{digest[:12]}; not stored ({LM_BASE_NEEDED})"
            )
    _save_stamp(path, {**_stat(path), "sha256": digest}, None)  # the bytes just hashed
    return path


def _view(array: Array) -> np.ndarray[Any, Any]:
    """The tensor a Flower ``Array`` carries, as a read-only view into its bytes (npy format:
    a header, then the C-order data), so a large base is not copied to be written out. An
    array in another layout is decoded as Flower does (a copy)."""
    buf = io.BytesIO(array.data)
    fmt = np.lib.format
    try:
        version = fmt.read_magic(buf)
        readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        reader = readers.get(version)
        shape, fortran, dtype = reader(buf) if reader else ((), True, np.dtype(object))
    except (ValueError, TypeError):
        return np.ascontiguousarray(array.numpy())
    if fortran or dtype.hasobject:
        return np.ascontiguousarray(array.numpy())
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=buf.tell())
    return flat.reshape(shape)


def store_sent_base(
    record: ArrayRecord, cfg: Mapping[str, Any], node_config: Mapping[str, Any]
) -> Path:
    """:func:`store_base` for a message's config record (its ``arch-config`` names the base)."""
    try:
        spec = json.loads(str(cfg.get(TrainConfig.ARCH_CONFIG, "{}")))
    except ValueError:
        spec = None
    return store_base(record, spec if isinstance(spec, dict) else {}, node_config)
