"""A synchronous client of ModelService: upload models and datasets, list, show, remove, export.

Why its own module: the CLI's ``models`` verbs use it when a coordinator is configured, and
then never read a data dir. Files are hashed in a first pass and streamed in 1 MiB chunks in a
second, so an upload of a large checkpoint never sits in memory whole; the server refuses any
file whose bytes do not match the declared size and sha256. Failures are
:class:`AdminClientError` with one line, like every admin call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.v1 import models_pb2, models_pb2_grpc

__all__ = ["CHUNK_BYTES", "Export", "LocalFile", "ModelsClient"]

CHUNK_BYTES = 1 << 20
UPLOAD_TIMEOUT = 600.0  # seconds for a whole upload or export (a 128 MiB file on a slow link)
KINDS = {
    "module_source": models_pb2.UPLOAD_KIND_MODULE_SOURCE,
    "checkpoint": models_pb2.UPLOAD_KIND_CHECKPOINT,
    "dataset": models_pb2.UPLOAD_KIND_DATASET,
    "exported_program": models_pb2.UPLOAD_KIND_EXPORTED_PROGRAM,
}
FORMATS = {
    "tflite": models_pb2.EXPORT_FORMAT_TFLITE,
    "onnx": models_pb2.EXPORT_FORMAT_ONNX,
    "bundle": models_pb2.EXPORT_FORMAT_BUNDLE,
}


@dataclass(frozen=True)
class LocalFile:
    """A file to upload: what it is (a key of ``KINDS``) and where it is."""

    kind: str
    path: Path

    def describe(self) -> models_pb2.UploadedFile:
        digest = hashlib.sha256()
        size = 0
        try:
            with self.path.open("rb") as f:
                while block := f.read(CHUNK_BYTES):
                    digest.update(block)
                    size += len(block)
        except OSError as exc:
            raise AdminClientError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        return models_pb2.UploadedFile(
            kind=KINDS[self.kind],
            file_name=self.path.name,
            size=size,
            sha256=digest.hexdigest(),
        )


@dataclass(frozen=True)
class Export:
    """An exported artifact, its bytes checked against the header's size and sha256."""

    header: models_pb2.ExportHeader
    data: bytes


class ModelsClient(AdminClient):
    """The admin client plus ModelService (same channel, token and error lines)."""

    def __init__(
        self,
        address: str,
        token: str,
        timeout: float = UPLOAD_TIMEOUT,
        ca_cert: bytes | None = None,
    ) -> None:
        super().__init__(address, token, timeout=timeout, ca_cert=ca_cert)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)

    def __enter__(self) -> ModelsClient:
        return self

    def add_model(
        self, header: models_pb2.ModelUploadHeader, files: Sequence[LocalFile]
    ) -> models_pb2.AddModelResponse:
        """Upload ``files`` under ``header`` (its ``files`` are filled in here)."""
        header.ClearField("files")
        header.files.extend(f.describe() for f in files)

        def stream() -> Iterator[models_pb2.AddModelRequest]:
            yield models_pb2.AddModelRequest(header=header)
            for f in files:
                with f.path.open("rb") as fh:
                    while block := fh.read(CHUNK_BYTES):
                        chunk = models_pb2.FileChunk(kind=KINDS[f.kind], data=block)
                        yield models_pb2.AddModelRequest(chunk=chunk)

        reply: models_pb2.AddModelResponse = self._call(self._models.AddModel, stream())
        return reply

    def list_models(self) -> list[models_pb2.Model]:
        reply: models_pb2.ListModelsResponse = self._call(
            self._models.ListModels, models_pb2.ListModelsRequest()
        )
        return list(reply.models)

    def get_model(self, name: str) -> models_pb2.GetModelResponse:
        reply: models_pb2.GetModelResponse = self._call(
            self._models.GetModel, models_pb2.GetModelRequest(name=name)
        )
        return reply

    def get_variant(self, variant: str) -> models_pb2.GetVariantResponse:
        reply: models_pb2.GetVariantResponse = self._call(
            self._models.GetVariant, models_pb2.GetVariantRequest(variant=variant)
        )
        return reply

    def remove_model(self, name: str) -> list[str]:
        reply: models_pb2.RemoveModelResponse = self._call(
            self._models.RemoveModel, models_pb2.RemoveModelRequest(name=name)
        )
        return list(reply.removed_variants)

    def export(self, model: str, variant: str, fmt: str) -> Export:
        """Stream one artifact; refuse it unless its bytes match the header's size and hash."""
        request = models_pb2.ExportVariantRequest(
            model=model,
            variant=variant,
            format=FORMATS[fmt],
        )

        def collect(req: object, **kw: object) -> list[models_pb2.ExportChunk]:
            stream: Iterator[models_pb2.ExportChunk] = self._models.ExportVariant(req, **kw)
            return list(stream)

        chunks = self._call(collect, request)
        if not chunks or chunks[0].WhichOneof("part") != "header":
            raise AdminClientError(
                "the coordinator sent no export header", grpc.StatusCode.INTERNAL
            )
        header = chunks[0].header
        data = b"".join(c.data for c in chunks[1:])
        if len(data) != header.size or hashlib.sha256(data).hexdigest() != header.sha256:
            raise AdminClientError(
                f"export of {header.variant_id[:12]} arrived damaged "
                f"({len(data)} of {header.size} bytes or a wrong sha256); try again"
            )
        return Export(header, data)
