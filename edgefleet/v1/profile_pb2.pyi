from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_CLASS_UNSPECIFIED: _ClassVar[DeviceClass]
    DEVICE_CLASS_PHONE: _ClassVar[DeviceClass]
    DEVICE_CLASS_SBC: _ClassVar[DeviceClass]
    DEVICE_CLASS_ACCELERATOR: _ClassVar[DeviceClass]
    DEVICE_CLASS_MCU: _ClassVar[DeviceClass]
    DEVICE_CLASS_SERVER: _ClassVar[DeviceClass]
DEVICE_CLASS_UNSPECIFIED: DeviceClass
DEVICE_CLASS_PHONE: DeviceClass
DEVICE_CLASS_SBC: DeviceClass
DEVICE_CLASS_ACCELERATOR: DeviceClass
DEVICE_CLASS_MCU: DeviceClass
DEVICE_CLASS_SERVER: DeviceClass

class DeviceProfile(_message.Message):
    __slots__ = ("name", "device_class", "arch", "cpu", "cpu_cores", "cpu_mhz", "ram_bytes", "storage_bytes", "accelerators", "precisions", "runtimes", "battery_mah", "link_kbps", "simulated", "sram_region_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_CLASS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    CPU_MHZ_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATORS_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    BATTERY_MAH_FIELD_NUMBER: _ClassVar[int]
    LINK_KBPS_FIELD_NUMBER: _ClassVar[int]
    SIMULATED_FIELD_NUMBER: _ClassVar[int]
    SRAM_REGION_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    device_class: DeviceClass
    arch: str
    cpu: str
    cpu_cores: int
    cpu_mhz: int
    ram_bytes: int
    storage_bytes: int
    accelerators: _containers.RepeatedScalarFieldContainer[str]
    precisions: _containers.RepeatedScalarFieldContainer[str]
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    battery_mah: int
    link_kbps: int
    simulated: bool
    sram_region_bytes: int
    def __init__(self, name: _Optional[str] = ..., device_class: _Optional[_Union[DeviceClass, str]] = ..., arch: _Optional[str] = ..., cpu: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., cpu_mhz: _Optional[int] = ..., ram_bytes: _Optional[int] = ..., storage_bytes: _Optional[int] = ..., accelerators: _Optional[_Iterable[str]] = ..., precisions: _Optional[_Iterable[str]] = ..., runtimes: _Optional[_Iterable[str]] = ..., battery_mah: _Optional[int] = ..., link_kbps: _Optional[int] = ..., simulated: _Optional[bool] = ..., sram_region_bytes: _Optional[int] = ...) -> None: ...
