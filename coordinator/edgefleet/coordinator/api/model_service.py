"""ModelService: models and variants over the API, so no CLI ever reads a data dir (issue 18).

Served on the main (admin) port next to AdminService, with its auth (:func:`.guard.admin_rpc`:
uploads and removals need the admin role, reads accept read-only tokens). Every store call
runs in a thread: the store is synchronous (workers and the CLI's local mode use it too) and
may read Redis or hash megabytes, which must not stall heartbeats on the event loop.

The server never runs torch: an upload is checked (``model_upload``) and stored as blobs, and
the model registered *pending*; a build job on a worker makes its base variant. Export hands
out the bundle's own verified files (``model.onnx``, ``model.tflite``) or its archive; the C
source form is made by the CLI from the ``.tflite``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import redis

from edgefleet.archive import pack_directory
from edgefleet.bundle import BundleError
from edgefleet.coordinator.api.guard import admin_rpc
from edgefleet.coordinator.api.model_upload import check_contents, read_upload
from edgefleet.coordinator.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.registry import Registry
from edgefleet.coordinator.rollouts.document import ACTIVE_STATES
from edgefleet.coordinator.rollouts.manager import RolloutManager
from edgefleet.coordinator.shared_store import CorruptBlobError, LocalStore, check_model_name
from edgefleet.coordinator.tokens import Tokens
from edgefleet.v1 import models_pb2, models_pb2_grpc
from edgefleet.variant_store import (
    ModelEntry,
    StoreError,
    UnknownModelError,
    UnknownVariantError,
)

__all__ = ["ModelServicer"]

T = TypeVar("T")
EXPORT_CHUNK_BYTES = 256 * 1024
_HEX = re.compile(r"[0-9a-f]{6,64}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:=+,-]{0,255}")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a store call in a thread; its errors become the API's one-line statuses."""
    try:
        return await asyncio.to_thread(fn, *args)
    except (UnknownModelError, UnknownVariantError) as exc:
        raise NotFound(str(exc)) from None
    except CorruptBlobError as exc:
        raise FailedPrecondition(f"refused: {exc}") from None
    except BundleError as exc:
        raise FailedPrecondition(f"variant fails verification: {exc}") from None
    except StoreError as exc:
        raise FailedPrecondition(str(exc)) from None
    except redis.RedisError as exc:
        raise Unavailable(f"variant store unavailable: {exc}") from None


def _model_name(name: str) -> str:
    try:
        return check_model_name(name)
    except StoreError as exc:
        raise InvalidArgument("name", str(exc).removeprefix("illegal model name ")) from None


def model_to_proto(entry: ModelEntry) -> models_pb2.Model:
    return models_pb2.Model(
        name=entry.name,
        architecture=str(entry.architecture.get("name", "")),
        dataset=entry.dataset,
        base=entry.base,
        variants=entry.variants,
        state="ready" if entry.base else "pending",
        entry_json=json.dumps(entry.to_json(), sort_keys=True),
    )


def summary(variant_id: str, manifest: dict[str, Any]) -> models_pb2.VariantSummary:
    metrics = manifest.get("metrics") or {}
    files = manifest.get("files") or {}
    return models_pb2.VariantSummary(
        id=variant_id,
        recipe=str(manifest.get("recipe_label", "")),
        precision=str(manifest.get("precision", "")),
        bytes=sum(int(f.get("bytes", 0)) for f in files.values()),
        accuracy=float(metrics.get("accuracy", 0.0)),
        latency_ms=float(metrics.get("latency_ms", 0.0)),
    )


class ModelServicer(models_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        store: LocalStore,
        registry: Registry,
        tokens: Tokens,
        rollouts: RolloutManager | None,
        metrics: CoordinatorMetrics | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._tokens = tokens
        self._rollouts = rollouts
        self._metrics = metrics

    @admin_rpc(write=True)
    async def AddModel(
        self,
        request_iterator: AsyncIterator[models_pb2.AddModelRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> models_pb2.AddModelResponse:
        upload = await read_upload(request_iterator)
        name = _model_name(upload.header.name)
        await asyncio.to_thread(check_contents, upload)
        if name in {m.name for m in await _in_thread(self._store.models)}:
            raise FailedPrecondition(f"model {name!r} already exists (remove it first)")
        blobs: dict[str, str] = {}
        for kind, data in upload.files.items():  # the blobs first: the entry names them
            blobs[kind] = await _in_thread(self._store.put_blob, data)
        h = upload.header
        source: dict[str, Any] = {
            "upload": blobs,
            "files": upload.file_names,
            "build": {
                "epochs": h.epochs or 30,
                "frontend": h.frontend or "auto",
                "latency_runs": h.latency_runs or 300,
            },
        }
        if "dataset" in blobs:
            source["dataset_blob"] = blobs["dataset"]
        architecture = {
            "name": h.architecture,
            "config": upload.config,
            "import_path": h.import_path or None,
            "width": h.width or 1.0,
        }
        entry = ModelEntry(name, architecture, upload.dataset_name, "", [], source)
        await _in_thread(self._store.add_model, entry)
        return models_pb2.AddModelResponse(
            model=model_to_proto(entry), stored_bytes=sum(len(d) for d in upload.files.values())
        )

    @admin_rpc(write=False)
    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.ListModelsResponse:
        models = await _in_thread(self._store.models)
        return models_pb2.ListModelsResponse(models=[model_to_proto(m) for m in models])

    @admin_rpc(write=False)
    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.GetModelResponse:
        entry = await _in_thread(self._store.model, _model_name(request.name))
        ids = list(dict.fromkeys(v for v in [entry.base, *entry.variants] if v))
        rows = [summary(v, await _in_thread(self._store.manifest, v)) for v in ids]
        return models_pb2.GetModelResponse(model=model_to_proto(entry), variants=rows)

    @admin_rpc(write=False)
    async def GetVariant(
        self, request: models_pb2.GetVariantRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.GetVariantResponse:
        if not _HEX.fullmatch(request.variant):
            raise InvalidArgument("variant", "give a variant id or a prefix of 6+ lowercase hex")
        bundle = await _in_thread(self._store.load, request.variant)
        manifest = {"id": bundle.variant_id, **bundle.manifest}
        return models_pb2.GetVariantResponse(
            id=bundle.variant_id, manifest_json=json.dumps(manifest, sort_keys=True)
        )

    @admin_rpc(write=True)
    async def RemoveModel(
        self, request: models_pb2.RemoveModelRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> models_pb2.RemoveModelResponse:
        name = _model_name(request.name)
        entry = await _in_thread(self._store.model, name)
        await self._refuse_if_in_use(entry)
        removed = await _in_thread(self._store.remove, name)
        return models_pb2.RemoveModelResponse(removed_variants=removed)

    async def _refuse_if_in_use(self, entry: ModelEntry) -> None:
        """FAILED_PRECONDITION while an active rollout deploys the model or any device runs
        (or is assigned) one of its variants: removing it would strand them."""
        if self._rollouts is not None:
            for r in await self._rollouts.list_rollouts():
                if r.model == entry.name and r.state in ACTIVE_STATES:
                    raise FailedPrecondition(
                        f"model {entry.name!r} is being deployed by rollout {r.id} ({r.state}); "
                        "let it finish or abort it first"
                    )
        ids = {v for v in [entry.base, *entry.variants] if v}
        users = [
            d.record
            for d in await self._registry.list_devices()
            if d.record.active_variant in ids or d.record.desired.variant in ids
        ]
        if users:
            first = users[0]
            more = f" and {len(users) - 1} more" if len(users) > 1 else ""
            raise FailedPrecondition(
                f"model {entry.name!r} is in use: device {first.name or first.id}{more} "
                "runs or is assigned one of its variants; deploy another model to them first"
            )

    @admin_rpc(write=False)
    async def ExportVariant(
        self,
        request: models_pb2.ExportVariantRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        name = _model_name(request.model)
        if not _LABEL.fullmatch(request.variant):
            raise InvalidArgument("variant", "give a variant id prefix (6+ hex) or a recipe label")
        if request.format not in (
            models_pb2.EXPORT_FORMAT_TFLITE,
            models_pb2.EXPORT_FORMAT_ONNX,
            models_pb2.EXPORT_FORMAT_BUNDLE,
        ):
            raise InvalidArgument("format", "must be tflite, onnx or bundle")
        header, data = await _in_thread(self._artifact, name, request.variant, request.format)
        await context.write(models_pb2.ExportChunk(header=header))
        for start in range(0, len(data), EXPORT_CHUNK_BYTES):
            await context.write(
                models_pb2.ExportChunk(data=data[start : start + EXPORT_CHUNK_BYTES])
            )

    def _artifact(self, model: str, wanted: str, fmt: int) -> tuple[models_pb2.ExportHeader, bytes]:
        """The verified artifact of ``model``'s variant ``wanted`` (blocking)."""
        variant_id = self._pick(model, wanted)
        bundle = self._store.load(variant_id)  # hash and signature checked first
        label = str(bundle.manifest.get("recipe_label", ""))
        if fmt == models_pb2.EXPORT_FORMAT_ONNX:
            file_name, data = "model.onnx", bytes(bundle.file("model.onnx"))
        elif fmt == models_pb2.EXPORT_FORMAT_TFLITE:
            if "model.tflite" not in bundle.files:
                raise StoreError(
                    f"variant {variant_id[:12]} ({label}) has no model.tflite "
                    "(only static int8 variants carry one)"
                )
            file_name, data = "model.tflite", bytes(bundle.file("model.tflite"))
        else:
            buf = io.BytesIO()
            pack_directory(self._store.bundle_dir(variant_id), buf)
            file_name, data = f"{variant_id}.tar", buf.getvalue()
        header = models_pb2.ExportHeader(
            variant_id=variant_id,
            recipe=label,
            file_name=file_name,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        return header, data

    def _pick(self, model: str, wanted: str) -> str:
        entry = self._store.model(model)
        ids = list(dict.fromkeys(v for v in [entry.base, *entry.variants] if v))
        if not ids:
            raise StoreError(
                f"model {model!r} has no built variant yet (build it: `edgefleet models build`)"
            )
        if _HEX.fullmatch(wanted):
            hits = [v for v in ids if v.startswith(wanted)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise StoreError(f"variant prefix {wanted!r} of {model} is ambiguous")
        labels = {v: str(self._store.manifest(v).get("recipe_label", "")) for v in ids}
        by_label = [v for v, label in labels.items() if label == wanted]
        if len(by_label) == 1:
            return by_label[0]
        raise UnknownVariantError(
            f"model {model!r} has no variant {wanted!r} (give an id prefix or one of: "
            f"{', '.join(sorted(set(labels.values())))})"
        )
