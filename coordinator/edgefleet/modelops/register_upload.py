"""Build the base variant of a model uploaded over the API (``ModelService.AddModel``).

An upload is registered *pending*: its module source, checkpoint and dataset are blobs in the
variant store, named in the entry's ``source["upload"]``, and its base (the measured, signed
fp32 variant every recipe starts from) is not built yet, because the coordinator never runs
torch. Whoever builds (a worker's job, before ``build_variants``) calls
:func:`build_pending_base`: it rebuilds the architecture from the stored module text (no
``PYTHONPATH``, no import of the user's file), writes the checkpoint to a private temporary file
under its uploaded name (the suffix says safetensors or torch), and runs the same
:func:`~edgefleet.modelops.build.register_model` as a local ``models add``; the store then
replaces the pending entry with the built one, keeping the upload's blobs named in it (so
``models rm`` finds and deletes them). Idempotent: a model whose base exists is returned as is.

Duck-typed on the store (``model``, ``blob``, ``add_model``, ``put``, ``root``): model ops never
import the server's store module (import contract), the store is passed in.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgefleet.modelops.build import BuildOptions, Progress, register_model
from edgefleet.modelops.data import load_dataset
from edgefleet.modelops.measure import LatencyConfig
from edgefleet.variant_store import ModelEntry, StoreError, UnknownModelError
from edgefleet.zoo import ArchitectureError, ArchitectureSpec

__all__ = ["build_pending_base"]


def _noop(_label: str, _stage: str) -> None:
    return None


class _Replacing:
    """The store, as :func:`register_model` must see it to replace the pending entry ``name``:
    that name is free, and the entry it adds keeps the upload's blobs and build settings."""

    def __init__(self, store: Any, pending: ModelEntry) -> None:
        self._store = store
        self._pending = pending

    def model(self, name: str) -> ModelEntry:
        if name == self._pending.name:
            raise UnknownModelError(f"unknown model {name!r}")
        entry: ModelEntry = self._store.model(name)
        return entry

    def add_model(self, entry: ModelEntry) -> None:
        files = self._pending.source.get("files") or {}
        built = dict(entry.source)
        if "checkpoint" in built:  # a temporary path: name the uploaded file instead
            built["checkpoint"] = str(files.get("checkpoint", "checkpoint"))
        entry.source = {**self._pending.source, **built}
        self._store.add_model(entry)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def build_pending_base(
    store: Any,
    name: str,
    *,
    options: BuildOptions | None = None,
    progress: Progress = _noop,
) -> ModelEntry:
    """Build, measure, sign and list the base of uploaded model ``name``; return its entry."""
    entry: ModelEntry = store.model(name)  # a shared store writes the dataset blob locally
    if entry.base:
        return entry
    upload = entry.source.get("upload")
    if not isinstance(upload, dict):
        raise StoreError(f"model {name!r} has no base and no uploaded files to build one from")
    build = entry.source.get("build") or {}
    files = entry.source.get("files") or {}
    if options is None:
        options = BuildOptions(latency=LatencyConfig(runs=int(build.get("latency_runs", 300))))
    data = load_dataset(entry.dataset, store.root, frontend=build.get("frontend", "auto"))
    arch = entry.architecture
    if arch.get("name") == "custom":
        if "module_source" not in upload or not arch.get("import_path"):
            raise ArchitectureError(f"model {name!r}: custom but no module source was uploaded")
        text = store.blob(upload["module_source"]).decode("utf-8")
        spec = ArchitectureSpec(
            "custom",
            dict(arch.get("config") or {}),
            data.input_shape,
            import_path=str(arch["import_path"]),
            module_source=text,
        )
    else:
        spec = ArchitectureSpec.zoo(
            str(arch.get("name")),
            width=float(arch.get("width") or 1.0),
            num_classes=data.num_classes,
            input_shape=data.input_shape,
        )
    with tempfile.TemporaryDirectory(prefix="edgefleet-upload-") as tmp:
        checkpoint = None
        if "checkpoint" in upload:
            checkpoint = Path(tmp) / Path(str(files.get("checkpoint", "checkpoint.pt"))).name
            checkpoint.write_bytes(store.blob(upload["checkpoint"]))
        return register_model(
            _Replacing(store, entry),  # type: ignore[arg-type]
            name,
            spec,
            data,
            epochs=int(build.get("epochs", 30)),
            checkpoint=checkpoint,
            options=options,
            progress=progress,
        )
