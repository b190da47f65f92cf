from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("device_id", "variant_id", "offset", "have_variant")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    HAVE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    variant_id: str
    offset: int
    have_variant: str
    def __init__(self, device_id: _Optional[str] = ..., variant_id: _Optional[str] = ..., offset: _Optional[int] = ..., have_variant: _Optional[str] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_bytes", "archive_sha256", "delta_base")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DELTA_BASE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_bytes: int
    archive_sha256: str
    delta_base: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., archive_sha256: _Optional[str] = ..., delta_base: _Optional[str] = ...) -> None: ...
