"""Device profiles: the catalog is real and valid, bad profiles are named precisely."""

from __future__ import annotations

import os

import psutil
import pytest

from edgefleet.catalog import CATALOG, UnknownProfileError, get_profile
from edgefleet.hostdetect import detect_host_profile
from edgefleet.profiles import KIB, MIB, DeviceClass, ProfileError, validate_profile
from edgefleet.wire import profile_from_proto, profile_to_proto

REQUIRED = [
    "phone-flagship",
    "phone-budget",
    "rpi4",
    "rpi-zero2w",
    "jetson-nano",
    "cortex-m7",
    "cortex-m4",
    "esp32-s3",
]


def test_catalog_has_the_required_device_classes() -> None:
    assert set(REQUIRED) <= set(CATALOG)


@pytest.mark.parametrize("name", list(CATALOG))
def test_every_catalog_profile_survives_the_wire(name: str) -> None:
    profile = get_profile(name)
    assert profile_from_proto(profile_to_proto(profile)) == profile


def test_mcus_have_sram_and_flash_budgets_and_int8_only() -> None:
    mcus = [p for p in CATALOG.values() if p.device_class is DeviceClass.MCU]
    assert {p.name for p in mcus} >= {"cortex-m7", "cortex-m4", "esp32-s3"}
    for p in mcus:
        assert p.precisions == ("int8",)
        assert "mcu-sim" in p.runtimes and set(p.runtimes) <= {"mcu-sim", "tflm"}
        assert 0 < p.largest_ram_region <= p.ram_bytes  # an arena fits one contiguous region
        assert 64 * KIB <= p.largest_ram_region <= 2 * MIB  # the arena stays in on-chip SRAM
        assert p.ram_bytes <= 2 * MIB or "PSRAM" in p.cpu  # more only with a module's PSRAM
        assert p.storage_bytes <= 16 * MIB  # flash
    assert get_profile("cortex-m4").ram_bytes < get_profile("cortex-m7").ram_bytes


def test_published_resources_are_ordered_like_the_hardware() -> None:
    assert get_profile("phone-flagship").ram_bytes > get_profile("phone-budget").ram_bytes
    assert get_profile("rpi4").ram_bytes > get_profile("rpi-zero2w").ram_bytes
    assert "gpu:maxwell-128" in get_profile("jetson-nano").accelerators


def _with(base: str, /, **changes: object) -> dict[str, object]:
    data = get_profile(base).model_dump()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ram_bytes": -1}, "ram_bytes"),
        ({"storage_bytes": 0}, "storage_bytes"),
        ({"cpu_cores": 0}, "cpu_cores"),
        ({"precisions": ("fp64",)}, "precisions"),
        ({"precisions": ()}, "precisions"),
        ({"runtimes": ("tensorrt",)}, "runtimes"),
        ({"name": "Bad Name!"}, "name"),
        ({"ram_bytes": 1 << 60}, "ram_bytes"),
    ],
)
def test_invalid_profiles_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ProfileError) as info:
        validate_profile(_with("rpi4", **changes))
    assert info.value.field.startswith(field)
    assert str(info.value).startswith(f"profile.{field}")


def test_an_mcu_cannot_claim_float_precision() -> None:
    with pytest.raises(ProfileError) as info:
        validate_profile(_with("cortex-m4", precisions=("fp32", "int8")))
    assert info.value.field == "precisions"
    assert "int8" in str(info.value)


def test_only_mcus_run_the_mcu_simulator() -> None:
    with pytest.raises(ProfileError) as info:
        validate_profile(_with("rpi4", runtimes=("mcu-sim",)))
    assert info.value.field == "runtimes"


def test_unknown_profile_name_lists_the_choices() -> None:
    with pytest.raises(UnknownProfileError) as info:
        get_profile("rpi9")
    assert "rpi4" in str(info.value) and "auto" in str(info.value)


def test_auto_detection_reads_this_host(tmp_path: object) -> None:
    profile = detect_host_profile("/")
    assert profile.name == "auto"
    assert profile.cpu_cores == os.cpu_count()
    assert profile.ram_bytes == psutil.virtual_memory().total
    assert profile.storage_bytes == psutil.disk_usage("/").total
    assert profile.simulated is False
    assert "fp32" in profile.precisions and "int8" in profile.precisions
