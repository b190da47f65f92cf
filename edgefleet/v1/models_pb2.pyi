from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPLOAD_KIND_UNSPECIFIED: _ClassVar[UploadKind]
    UPLOAD_KIND_MODULE_SOURCE: _ClassVar[UploadKind]
    UPLOAD_KIND_CHECKPOINT: _ClassVar[UploadKind]
    UPLOAD_KIND_DATASET: _ClassVar[UploadKind]
    UPLOAD_KIND_EXPORTED_PROGRAM: _ClassVar[UploadKind]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    EXPORT_FORMAT_TFLITE: _ClassVar[ExportFormat]
    EXPORT_FORMAT_ONNX: _ClassVar[ExportFormat]
    EXPORT_FORMAT_BUNDLE: _ClassVar[ExportFormat]
UPLOAD_KIND_UNSPECIFIED: UploadKind
UPLOAD_KIND_MODULE_SOURCE: UploadKind
UPLOAD_KIND_CHECKPOINT: UploadKind
UPLOAD_KIND_DATASET: UploadKind
UPLOAD_KIND_EXPORTED_PROGRAM: UploadKind
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
EXPORT_FORMAT_TFLITE: ExportFormat
EXPORT_FORMAT_ONNX: ExportFormat
EXPORT_FORMAT_BUNDLE: ExportFormat

class UploadedFile(_message.Message):
    __slots__ = ("kind", "file_name", "size", "sha256")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    kind: UploadKind
    file_name: str
    size: int
    sha256: str
    def __init__(self, kind: _Optional[_Union[UploadKind, str]] = ..., file_name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ModelUploadHeader(_message.Message):
    __slots__ = ("name", "architecture", "import_path", "config_json", "width", "epochs", "dataset_name", "frontend", "latency_runs", "files")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    IMPORT_PATH_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAME_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    LATENCY_RUNS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    import_path: str
    config_json: str
    width: float
    epochs: int
    dataset_name: str
    frontend: str
    latency_runs: int
    files: _containers.RepeatedCompositeFieldContainer[UploadedFile]
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., import_path: _Optional[str] = ..., config_json: _Optional[str] = ..., width: _Optional[float] = ..., epochs: _Optional[int] = ..., dataset_name: _Optional[str] = ..., frontend: _Optional[str] = ..., latency_runs: _Optional[int] = ..., files: _Optional[_Iterable[_Union[UploadedFile, _Mapping]]] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("kind", "data")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    kind: UploadKind
    data: bytes
    def __init__(self, kind: _Optional[_Union[UploadKind, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AddModelRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ModelUploadHeader
    chunk: FileChunk
    def __init__(self, header: _Optional[_Union[ModelUploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "architecture", "dataset", "base", "variants", "state", "entry_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENTRY_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    architecture: str
    dataset: str
    base: str
    variants: _containers.RepeatedScalarFieldContainer[str]
    state: str
    entry_json: str
    def __init__(self, name: _Optional[str] = ..., architecture: _Optional[str] = ..., dataset: _Optional[str] = ..., base: _Optional[str] = ..., variants: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., entry_json: _Optional[str] = ...) -> None: ...

class AddModelResponse(_message.Message):
    __slots__ = ("model", "stored_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: Model
    stored_bytes: int
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., stored_bytes: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class VariantSummary(_message.Message):
    __slots__ = ("id", "recipe", "precision", "bytes", "accuracy", "latency_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    recipe: str
    precision: str
    bytes: int
    accuracy: float
    latency_ms: float
    def __init__(self, id: _Optional[str] = ..., recipe: _Optional[str] = ..., precision: _Optional[str] = ..., bytes: _Optional[int] = ..., accuracy: _Optional[float] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model", "variants")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    model: Model
    variants: _containers.RepeatedCompositeFieldContainer[VariantSummary]
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., variants: _Optional[_Iterable[_Union[VariantSummary, _Mapping]]] = ...) -> None: ...

class GetVariantRequest(_message.Message):
    __slots__ = ("variant",)
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    variant: str
    def __init__(self, variant: _Optional[str] = ...) -> None: ...

class GetVariantResponse(_message.Message):
    __slots__ = ("id", "manifest_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    manifest_json: str
    def __init__(self, id: _Optional[str] = ..., manifest_json: _Optional[str] = ...) -> None: ...

class RemoveModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveModelResponse(_message.Message):
    __slots__ = ("removed_variants",)
    REMOVED_VARIANTS_FIELD_NUMBER: _ClassVar[int]
    removed_variants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed_variants: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportVariantRequest(_message.Message):
    __slots__ = ("model", "variant", "format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: str
    variant: str
    format: ExportFormat
    def __init__(self, model: _Optional[str] = ..., variant: _Optional[str] = ..., format: _Optional[_Union[ExportFormat, str]] = ...) -> None: ...

class ExportHeader(_message.Message):
    __slots__ = ("variant_id", "recipe", "file_name", "size", "sha256")
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    variant_id: str
    recipe: str
    file_name: str
    size: int
    sha256: str
    def __init__(self, variant_id: _Optional[str] = ..., recipe: _Optional[str] = ..., file_name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ExportHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ExportHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...
