"""Device profiles: the resources a device class offers, validated.

Why a typed, validated model: selection (which variant fits which device) will
compare these numbers against measured variant sizes, so a profile with a
negative RAM size or an unknown precision must be refused at the boundary with
a message naming the field, not discovered later as a wrong deployment.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.limits import MAX_ACCELERATORS, MAX_PRECISIONS, MAX_PROFILE_STRING, MAX_RUNTIMES

Precision = Literal["fp32", "fp16", "int8"]
Runtime = Literal["torch", "onnxruntime", "litert", "tflm", "mcu-sim"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "litert", "tflm", "mcu-sim")
#: What a microcontroller can run: TensorFlow Lite Micro's interpreter and its emulator.
MCU_RUNTIMES: frozenset[str] = frozenset({"tflm", "mcu-sim"})

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Upper bounds that no edge device reaches; a value above them is a unit mistake.
_MAX_BYTES = 1 << 50  # 1 PiB
_MAX_CORES = 1024
_MAX_MHZ = 10_000


class DeviceClass(StrEnum):
    """What kind of hardware a profile describes (mirrors ``edgefleet.v1.DeviceClass``)."""

    PHONE = "phone"
    SBC = "sbc"
    ACCELERATOR = "accelerator"
    MCU = "mcu"
    SERVER = "server"


class ProfileError(ValueError):
    """A profile failed validation. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"profile.{field}: {message}")
        self.field = field
        self.reason = message


class DeviceProfile(BaseModel):
    """Resources of one device class. On an MCU, ``ram_bytes`` is SRAM and ``storage_bytes`` flash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    device_class: DeviceClass
    arch: str = Field(min_length=1, max_length=32)
    cpu: str = Field(default="", max_length=128)
    cpu_cores: int = Field(ge=1, le=_MAX_CORES)
    cpu_mhz: int = Field(ge=1, le=_MAX_MHZ)
    ram_bytes: int = Field(ge=1, le=_MAX_BYTES)
    storage_bytes: int = Field(ge=1, le=_MAX_BYTES)
    accelerators: tuple[Annotated[str, Field(max_length=MAX_PROFILE_STRING)], ...] = Field(
        default=(), max_length=MAX_ACCELERATORS
    )
    precisions: tuple[Precision, ...] = Field(min_length=1, max_length=MAX_PRECISIONS)
    runtimes: tuple[Runtime, ...] = Field(default=(), max_length=MAX_RUNTIMES)
    battery_mah: int = Field(default=0, ge=0, le=1_000_000)
    link_kbps: int = Field(default=0, ge=0, le=1_000_000_000)
    simulated: bool = False
    #: Largest contiguous SRAM region (0: all of ``ram_bytes`` is one region). An MCU's SRAM
    #: is several banks at separate addresses (the STM32H743's 1 MB is 512 KB AXI SRAM + 2 x
    #: 128 KB + 32 KB + 64 KB DTCM ...); a runtime's arena is one array, so it must fit one.
    sram_region_bytes: int = Field(default=0, ge=0, le=_MAX_BYTES)

    @model_validator(mode="after")
    def _mcu_is_integer_only(self) -> DeviceProfile:
        """A microcontroller has no FPU budget for float inference: int8, and only the MCU
        runtimes (TFLM or its emulator). Both stand for a microcontroller (their latency is
        simulated device time from the cycle model), so neither is offered elsewhere."""
        if self.device_class is DeviceClass.MCU:
            if set(self.precisions) != {"int8"}:
                raise ValueError("precisions: an mcu profile supports only int8")
            if set(self.runtimes) - MCU_RUNTIMES:
                raise ValueError("runtimes: an mcu profile runs only the tflm and mcu-sim runtimes")
        elif MCU_RUNTIMES & set(self.runtimes):
            mcu_only = ", ".join(sorted(MCU_RUNTIMES & set(self.runtimes)))
            raise ValueError(f"runtimes: {mcu_only} is only for mcu profiles")
        return self

    @model_validator(mode="after")
    def _region_within_ram(self) -> DeviceProfile:
        if self.sram_region_bytes > self.ram_bytes:
            raise ValueError("sram_region_bytes: larger than ram_bytes")
        return self

    @property
    def is_mcu(self) -> bool:
        return self.device_class is DeviceClass.MCU

    @property
    def largest_ram_region(self) -> int:
        """Bytes of the largest contiguous RAM region: where an arena must fit."""
        return min(self.sram_region_bytes or self.ram_bytes, self.ram_bytes)


def validate_profile(data: dict[str, object]) -> DeviceProfile:
    """Build a profile from plain data, turning pydantic's report into a ``ProfileError``.

    The first failing field is named, because operators and agents need one
    actionable line (e.g. ``profile.ram_bytes: must be >= 1``), not a dump.
    """
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        msg = str(err["msg"])
        if not loc and ":" in msg:  # model-level validators name the field themselves
            head, _, rest = msg.removeprefix("Value error, ").partition(":")
            raise ProfileError(head.strip(), rest.strip()) from None
        field = ".".join(loc) or "profile"
        raise ProfileError(field, msg) from None
