"""The catalog of real device classes and their published resources.

Numbers come from vendor datasheets of a representative board for each class
(named in ``cpu``), so simulated fleets behave like the devices they stand for.
Microcontrollers are simulated: RAM is their on-chip SRAM, storage their flash,
and they run integer-only (int8) inference.
"""

from __future__ import annotations

from edgefleet.profiles import GIB, KIB, MIB, DeviceClass, DeviceProfile

_CATALOG: tuple[DeviceProfile, ...] = (
    DeviceProfile(
        name="phone-flagship",
        device_class=DeviceClass.PHONE,
        arch="aarch64",
        cpu="Snapdragon 8 Gen 2 (1x Cortex-X3 3.2 GHz + 4x A715/A710 + 3x A510)",
        cpu_cores=8,
        cpu_mhz=3200,
        ram_bytes=12 * GIB,
        storage_bytes=256 * GIB,
        accelerators=("gpu:adreno-740", "npu:hexagon"),
        precisions=("fp32", "fp16", "int8"),
        runtimes=("torch", "onnxruntime"),
        battery_mah=5000,
        link_kbps=100_000,
        simulated=True,
    ),
    DeviceProfile(
        name="phone-budget",
        device_class=DeviceClass.PHONE,
        arch="aarch64",
        cpu="MediaTek Helio G85 (2x Cortex-A75 2.0 GHz + 6x A55)",
        cpu_cores=8,
        cpu_mhz=2000,
        ram_bytes=4 * GIB,
        storage_bytes=64 * GIB,
        accelerators=("gpu:mali-g52",),
        precisions=("fp32", "int8"),
        runtimes=("onnxruntime",),
        battery_mah=5000,
        link_kbps=20_000,
        simulated=True,
    ),
    DeviceProfile(
        name="rpi5",
        device_class=DeviceClass.SBC,
        arch="aarch64",
        cpu="Broadcom BCM2712 (4x Cortex-A76 2.4 GHz)",
        cpu_cores=4,
        cpu_mhz=2400,
        ram_bytes=8 * GIB,
        storage_bytes=64 * GIB,
        precisions=("fp32", "fp16", "int8"),
        runtimes=("torch", "onnxruntime"),
        link_kbps=1_000_000,
        simulated=True,
    ),
    DeviceProfile(
        name="rpi4",
        device_class=DeviceClass.SBC,
        arch="aarch64",
        cpu="Broadcom BCM2711 (4x Cortex-A72 1.5 GHz)",
        cpu_cores=4,
        cpu_mhz=1500,
        ram_bytes=4 * GIB,
        storage_bytes=32 * GIB,
        precisions=("fp32", "int8"),
        runtimes=("torch", "onnxruntime"),
        link_kbps=1_000_000,
        simulated=True,
    ),
    DeviceProfile(
        name="rpi3",
        device_class=DeviceClass.SBC,
        arch="aarch64",
        cpu="Broadcom BCM2837B0 (4x Cortex-A53 1.4 GHz)",
        cpu_cores=4,
        cpu_mhz=1400,
        ram_bytes=1 * GIB,
        storage_bytes=16 * GIB,
        precisions=("fp32", "int8"),
        runtimes=("onnxruntime",),
        link_kbps=300_000,
        simulated=True,
    ),
    DeviceProfile(
        name="rpi-zero2w",
        device_class=DeviceClass.SBC,
        arch="aarch64",
        cpu="Broadcom RP3A0 (4x Cortex-A53 1.0 GHz)",
        cpu_cores=4,
        cpu_mhz=1000,
        ram_bytes=512 * MIB,
        storage_bytes=16 * GIB,
        precisions=("fp32", "int8"),
        runtimes=("onnxruntime",),
        link_kbps=20_000,
        simulated=True,
    ),
    DeviceProfile(
        name="jetson-nano",
        device_class=DeviceClass.ACCELERATOR,
        arch="aarch64",
        cpu="NVIDIA Tegra X1 (4x Cortex-A57 1.43 GHz)",
        cpu_cores=4,
        cpu_mhz=1430,
        ram_bytes=4 * GIB,
        storage_bytes=16 * GIB,
        accelerators=("gpu:maxwell-128",),
        precisions=("fp32", "fp16", "int8"),
        runtimes=("torch", "onnxruntime"),
        link_kbps=1_000_000,
        simulated=True,
    ),
    DeviceProfile(
        name="cortex-m7",
        device_class=DeviceClass.MCU,
        arch="armv7em",
        cpu="STM32H743 (Cortex-M7 480 MHz)",
        cpu_cores=1,
        cpu_mhz=480,
        ram_bytes=1 * MIB,
        storage_bytes=2 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim",),
        link_kbps=1_000,
        simulated=True,
    ),
    DeviceProfile(
        name="cortex-m4",
        device_class=DeviceClass.MCU,
        arch="armv7em",
        cpu="STM32L4R5 (Cortex-M4F 120 MHz, MLPerf Tiny reference board)",
        cpu_cores=1,
        cpu_mhz=120,
        ram_bytes=640 * KIB,
        storage_bytes=2 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim",),
        link_kbps=250,
        simulated=True,
    ),
    DeviceProfile(
        name="esp32-s3",
        device_class=DeviceClass.MCU,
        arch="xtensa-lx7",
        cpu="ESP32-S3 (2x Xtensa LX7 240 MHz)",
        cpu_cores=2,
        cpu_mhz=240,
        ram_bytes=512 * KIB,
        storage_bytes=8 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim",),
        battery_mah=1000,
        link_kbps=2_000,
        simulated=True,
    ),
)

CATALOG: dict[str, DeviceProfile] = {p.name: p for p in _CATALOG}


class UnknownProfileError(KeyError):
    """A profile name that is neither in the catalog nor ``auto``."""

    def __str__(self) -> str:
        return f"unknown profile {self.args[0]!r}; choose one of: auto, {', '.join(CATALOG)}"


def get_profile(name: str) -> DeviceProfile:
    """Look up a catalog profile by name."""
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownProfileError(name) from None
