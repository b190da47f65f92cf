"""``ModelService.AddModel``'s stream, checked: the header, every chunk, every file's hash.

Why here and not in the store: this is where untrusted bytes arrive. Each field is bounded
before anything is kept (names, sizes, hashes, encodings), chunks must arrive in the declared
order and never run past their file's declared size, and a file counts only once its bytes
hash to the declared sha256. Then the contents are checked without running any of them: the
module source must be UTF-8 Python that parses and defines the named factory at top level, the
dataset must load as an ``.npz`` of ``x``/``y`` (:func:`edgefleet.datasets.load_npz`, numpy only),
a checkpoint must be a torch zip or a safetensors file. Only then are the blobs stored, and the
pending model entry (which names them) is written last by the caller.

Limits (per file): module source 1 MiB, checkpoint/exported program/dataset 128 MiB: the blobs
live in Redis (see ``shared_store``), and a model past these sizes wants an object store.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.coordinator.errors import FailedPrecondition, InvalidArgument
from edgefleet.coordinator.shared_store import check_model_name
from edgefleet.v1 import models_pb2
from edgefleet.variant_store import StoreError

__all__ = ["MAX_CHUNK_BYTES", "MAX_FILE_BYTES", "Upload", "read_upload"]

MAX_CHUNK_BYTES = 1 << 20
MAX_FILE_BYTES = {
    models_pb2.UPLOAD_KIND_MODULE_SOURCE: 1 << 20,
    models_pb2.UPLOAD_KIND_CHECKPOINT: 128 << 20,
    models_pb2.UPLOAD_KIND_DATASET: 128 << 20,
    models_pb2.UPLOAD_KIND_EXPORTED_PROGRAM: 128 << 20,
}
KIND_NAMES = {
    models_pb2.UPLOAD_KIND_MODULE_SOURCE: "module_source",
    models_pb2.UPLOAD_KIND_CHECKPOINT: "checkpoint",
    models_pb2.UPLOAD_KIND_DATASET: "dataset",
    models_pb2.UPLOAD_KIND_EXPORTED_PROGRAM: "exported_program",
}
BUILTIN_DATASETS = ("digits", "kws")
_SHA = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_DATASET = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_IMPORT_PATH = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_]\w*)")
MAX_CONFIG_CHARS = 64 * 1024


@dataclass
class Upload:
    """A checked upload: the header's settings and each file's verified bytes."""

    header: models_pb2.ModelUploadHeader
    config: dict[str, Any]
    dataset_name: str
    files: dict[str, bytes] = field(default_factory=dict)  # kind name -> bytes
    file_names: dict[str, str] = field(default_factory=dict)  # kind name -> base name


def check_header(h: models_pb2.ModelUploadHeader) -> tuple[dict[str, Any], str]:
    """Bound every header field; return (factory kwargs, dataset name). One line per error."""
    try:
        check_model_name(h.name)
    except StoreError as exc:
        raise InvalidArgument("name", str(exc).removeprefix("illegal model name ")) from None
    if not _ARCH.fullmatch(h.architecture):
        raise InvalidArgument("architecture", "give a zoo name such as ds-cnn, or custom")
    if not math.isfinite(h.width) or not 0.0 <= h.width <= 4.0:
        raise InvalidArgument("width", "must be in (0, 4] (0 = 1.0)")
    if h.epochs > 10_000:
        raise InvalidArgument("epochs", "must be at most 10000")
    if h.latency_runs > 100_000:
        raise InvalidArgument("latency_runs", "must be at most 100000")
    if h.frontend not in ("", "auto", "mfcc", "none"):
        raise InvalidArgument("frontend", "must be auto, mfcc or none")
    kinds = [f.kind for f in h.files]
    for i, f in enumerate(h.files):
        where = f"files[{i}]"
        if f.kind not in MAX_FILE_BYTES:
            raise InvalidArgument(f"{where}.kind", "must be a known upload kind")
        if kinds.count(f.kind) > 1:
            raise InvalidArgument(f"{where}.kind", f"{KIND_NAMES[f.kind]} is declared twice")
        if not _FILE_NAME.fullmatch(f.file_name):
            raise InvalidArgument(f"{where}.file_name", "must be a plain file name (no path)")
        if not 0 < f.size <= MAX_FILE_BYTES[f.kind]:
            limit = MAX_FILE_BYTES[f.kind] >> 20
            raise InvalidArgument(f"{where}.size", f"must be 1 byte to {limit} MiB, got {f.size}")
        if not _SHA.fullmatch(f.sha256):
            raise InvalidArgument(f"{where}.sha256", "must be 64 lowercase hex digits")
    custom = h.architecture == "custom"
    has = set(kinds)
    if models_pb2.UPLOAD_KIND_EXPORTED_PROGRAM in has:
        # compression rebuilds, prunes and re-trains an nn.Module; an ExportedProgram's graph
        # module is none of these, so its weights are taken with the module that defines it
        raise FailedPrecondition(
            "exported programs (.pt2) cannot be built: upload the module source (--arch custom "
            "--import-path module:Factory) with its weights, e.g. torch.save(torch.export.load("
            "'m.pt2').state_dict, 'm.pt') and --checkpoint m.pt"
        )
    if custom:
        if not _IMPORT_PATH.fullmatch(h.import_path):
            raise InvalidArgument("import_path", "custom models need 'module:Factory'")
        if models_pb2.UPLOAD_KIND_MODULE_SOURCE not in has:
            raise InvalidArgument("files", "a custom model needs its module source")
        if models_pb2.UPLOAD_KIND_CHECKPOINT not in has:
            raise InvalidArgument("files", "a custom model needs a checkpoint (it is not trained)")
    else:
        if h.import_path or h.config_json:
            raise InvalidArgument("import_path", "only custom models take an import path/config")
        if models_pb2.UPLOAD_KIND_MODULE_SOURCE in has:
            raise InvalidArgument("files", "only custom models take module source")
    config: dict[str, Any] = {}
    if h.config_json:
        if len(h.config_json) > MAX_CONFIG_CHARS:
            raise InvalidArgument("config_json", f"longer than {MAX_CONFIG_CHARS} characters")
        try:
            config = json.loads(h.config_json)
        except json.JSONDecodeError as exc:
            raise InvalidArgument("config_json", f"not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise InvalidArgument("config_json", "must be a JSON object")
    return config, _dataset_name(h)


def _dataset_name(h: models_pb2.ModelUploadHeader) -> str:
    uploaded = [f for f in h.files if f.kind == models_pb2.UPLOAD_KIND_DATASET]
    name = h.dataset_name or (Path(uploaded[0].file_name).stem if uploaded else "")
    if not uploaded:
        if name not in BUILTIN_DATASETS:
            raise InvalidArgument(
                "dataset_name",
                f"upload a dataset or name a built-in ({', '.join(BUILTIN_DATASETS)})",
            )
        return name
    if not _DATASET.fullmatch(name) or name in BUILTIN_DATASETS:
        raise InvalidArgument(
            "dataset_name", f"{name[:80]!r}: use 1-64 of A-Za-z0-9_.- and not a built-in's name"
        )
    return name


async def read_upload(requests: AsyncIterator[models_pb2.AddModelRequest]) -> Upload:
    """Read the whole stream: the header, then each declared file's chunks in order."""
    header: models_pb2.ModelUploadHeader | None = None
    parts: dict[int, list[bytes]] = {}
    received: dict[int, int] = {}
    order: list[int] = []
    pos = 0  # the file being received
    async for request in requests:
        which = request.WhichOneof("part")
        if which == "header":
            if header is not None:
                raise InvalidArgument("header", "sent twice")
            header = request.header
            check_header(header)
            order = [f.kind for f in header.files]
            continue
        if header is None:
            raise InvalidArgument("header", "must be the stream's first message")
        if which != "chunk":
            raise InvalidArgument("part", "each message is a header or a chunk")
        chunk = request.chunk
        if chunk.kind not in order:
            raise InvalidArgument("chunk.kind", "a file the header did not declare")
        while (
            pos < len(order)
            and chunk.kind != order[pos]
            and received.get(order[pos], 0) == _declared(header, order[pos]).size
        ):
            pos += 1  # the file before is complete: the next one may start
        if pos >= len(order) or chunk.kind != order[pos]:
            raise InvalidArgument("chunk.kind", "files must be sent whole, in declared order")
        if len(chunk.data) > MAX_CHUNK_BYTES or not chunk.data:
            raise InvalidArgument("chunk.data", "1 byte to 1 MiB per chunk")
        declared = _declared(header, chunk.kind)
        total = received.get(chunk.kind, 0) + len(chunk.data)
        if total > declared.size:
            raise InvalidArgument(
                f"{KIND_NAMES[chunk.kind]}", f"more bytes than the declared {declared.size}"
            )
        received[chunk.kind] = total
        parts.setdefault(chunk.kind, []).append(chunk.data)
    if header is None:
        raise InvalidArgument("header", "the stream was empty")
    config, dataset = check_header(header)
    upload = Upload(header, config, dataset)
    for f in header.files:
        data = b"".join(parts.get(f.kind, []))
        what = f"{KIND_NAMES[f.kind]} ({f.file_name})"
        if len(data) != f.size:
            raise InvalidArgument(what, f"got {len(data)} of the declared {f.size} bytes")
        actual = hashlib.sha256(data).hexdigest()
        if actual != f.sha256:
            raise InvalidArgument(what, f"sha256 {actual[:12]} != the declared {f.sha256[:12]}")
        upload.files[KIND_NAMES[f.kind]] = data
        upload.file_names[KIND_NAMES[f.kind]] = f.file_name
    return upload


def _declared(h: models_pb2.ModelUploadHeader, kind: int) -> models_pb2.UploadedFile:
    return next(f for f in h.files if f.kind == kind)


def check_contents(upload: Upload) -> None:
    """Check what the files are without running any of them (blocking: call in a thread)."""
    source = upload.files.get("module_source")
    if source is not None:
        _check_module(source, upload.header.import_path, upload.file_names["module_source"])
    checkpoint = upload.files.get("checkpoint")
    if checkpoint is not None:
        _check_checkpoint(checkpoint, upload.file_names["checkpoint"])
    dataset = upload.files.get("dataset")
    if dataset is not None:
        _check_dataset(dataset, upload.dataset_name, upload.file_names["dataset"])


def _check_module(source: bytes, import_path: str, file_name: str) -> None:
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument("module_source", f"{file_name} is not UTF-8 text: {exc}") from None
    try:
        tree = ast.parse(text, filename=file_name)
    except SyntaxError as exc:
        raise InvalidArgument(
            "module_source", f"{file_name} line {exc.lineno}: {exc.msg}"
        ) from None
    factory = import_path.partition(":")[2]
    defined: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    if factory not in defined:
        raise InvalidArgument("import_path", f"{file_name} defines no top-level {factory!r}")


def _check_checkpoint(data: bytes, file_name: str) -> None:
    if file_name.endswith(".safetensors"):
        if len(data) < 10 or data[8:9] != b"{":
            raise InvalidArgument("checkpoint", f"{file_name} is not a safetensors file")
        return
    if data[:4] != b"PK\x03\x04":
        raise InvalidArgument(
            "checkpoint", f"{file_name} is neither a torch checkpoint (zip) nor .safetensors"
        )


def _check_dataset(data: bytes, name: str, file_name: str) -> None:
    from edgefleet.datasets import DatasetError, load_npz

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / file_name  # a checked plain name: errors name the user's file
        path.write_bytes(data)
        try:
            load_npz(path, name=name)
        except DatasetError as exc:
            raise InvalidArgument("dataset", str(exc)) from None
