"""The catalog of real device classes and their published resources.

Numbers come from vendor datasheets of a representative board for each class
(named in ``cpu``), so simulated fleets behave like the devices they stand for.
Microcontrollers are simulated: RAM is their on-chip SRAM plus any PSRAM on the module
(and the largest contiguous region their serving arena may use), storage their flash, and
they run integer-only (int8) inference; their latency comes from the per-op cycle model of
their core (``edgefleet.cycles``), which reads the core from ``cpu``. The PSRAM is what
on-device training may use (a quarter of RAM: ``edgefleet.fl.budget``), not the arena.
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
        runtimes=("torch", "onnxruntime", "litert"),
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
        runtimes=("onnxruntime", "litert"),
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
        runtimes=("torch", "onnxruntime", "litert"),
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
        runtimes=("torch", "onnxruntime", "litert"),
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
        runtimes=("onnxruntime", "litert"),
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
        runtimes=("onnxruntime", "litert"),
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
        runtimes=("torch", "onnxruntime", "litert"),
        link_kbps=1_000_000,
        simulated=True,
    ),
    # Microcontrollers: the boards published results are measured on, with their real clocks
    # and SRAM maps (vendor datasheets / reference manuals). ``sram_region_bytes`` is the
    # largest contiguous bank, where the runtime's one arena array must fit.
    DeviceProfile(
        name="nucleo-l4r5zi",
        device_class=DeviceClass.MCU,
        arch="armv7em",
        cpu="STM32L4R5ZI (Cortex-M4F 120 MHz; MLPerf Tiny reference board)",
        cpu_cores=1,
        cpu_mhz=120,
        # SRAM1 192 KB + SRAM2 64 KB + SRAM3 384 KB, mapped back to back from 0x2000_0000
        ram_bytes=640 * KIB,
        storage_bytes=2 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim", "tflm"),
        link_kbps=250,
        simulated=True,
    ),
    DeviceProfile(
        name="nucleo-h7a3zi-q",
        device_class=DeviceClass.MCU,
        arch="armv7em",
        cpu="STM32H7A3ZI (Cortex-M7 280 MHz; MLPerf Tiny reference board)",
        cpu_cores=1,
        cpu_mhz=280,
        # 1 MB AXI SRAM (3 banks, contiguous) + 128 KB AHB SRAM + 128 KB DTCM + 64 KB ITCM
        # + 32 KB SRD SRAM + 4 KB backup: ~1.4 MB
        ram_bytes=1380 * KIB,
        sram_region_bytes=1024 * KIB,
        storage_bytes=2 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim", "tflm"),
        link_kbps=1_000,
        simulated=True,
    ),
    DeviceProfile(
        name="stm32h743",
        device_class=DeviceClass.MCU,
        arch="armv7em",
        cpu="STM32H743ZI (Cortex-M7 480 MHz; NUCLEO-H743ZI2)",
        cpu_cores=1,
        cpu_mhz=480,
        # 512 KB AXI SRAM + 288 KB D2 SRAM1-3 + 64 KB SRAM4 + 128 KB DTCM + 64 KB ITCM + ...
        ram_bytes=1 * MIB,
        sram_region_bytes=512 * KIB,
        storage_bytes=2 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim", "tflm"),
        link_kbps=1_000,
        simulated=True,
    ),
    DeviceProfile(
        name="nucleo-u575zi-q",
        device_class=DeviceClass.MCU,
        arch="armv8m-main",
        cpu="STM32U575ZI (Cortex-M33 160 MHz)",
        cpu_cores=1,
        cpu_mhz=160,
        # SRAM1 192 KB + SRAM2 64 KB + SRAM3 512 KB contiguous, SRAM4 16 KB apart
        ram_bytes=784 * KIB,
        sram_region_bytes=768 * KIB,
        storage_bytes=2 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim", "tflm"),
        link_kbps=250,
        simulated=True,
    ),
    DeviceProfile(
        name="ek-ra8m1",
        device_class=DeviceClass.MCU,
        arch="armv8.1m-main",
        cpu="Renesas RA8M1 (Cortex-M85 480 MHz, Helium)",
        cpu_cores=1,
        cpu_mhz=480,
        # 1 MB SRAM including 128 KB of tightly coupled memory (ITCM + DTCM) at its own address
        ram_bytes=1 * MIB,
        sram_region_bytes=896 * KIB,
        storage_bytes=2 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim", "tflm"),
        link_kbps=1_000,
        simulated=True,
    ),
    DeviceProfile(
        name="esp32-s3",
        device_class=DeviceClass.MCU,
        arch="xtensa-lx7",
        cpu="ESP32-S3 (2x Xtensa LX7 240 MHz, PIE; ESP32-S3-WROOM-1 N8, no PSRAM)",
        cpu_cores=2,
        cpu_mhz=240,
        # SRAM0 64 KB (instruction bus only) + SRAM1 416 KB + SRAM2 32 KB: SRAM1 is the
        # largest data-addressable block (code placed in IRAM takes part of it on a real build)
        ram_bytes=512 * KIB,
        sram_region_bytes=416 * KIB,
        storage_bytes=8 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim", "tflm"),
        battery_mah=1000,
        link_kbps=2_000,
        simulated=True,
    ),
    # The same chip on the module variant with octal PSRAM: between the MCUs (training
    # budget <= 0.35 MB) and the Pis (>= 128 MB), the class whose DS-CNN round is a light
    # scope -- at a quarter of its RAM (edgefleet.fl.budget), 2.1 MB holds head-only
    # training at batch 16 but not full fine-tuning (~10 MB at batch 16).
    DeviceProfile(
        name="esp32-s3-n8r8",
        device_class=DeviceClass.MCU,
        arch="xtensa-lx7",
        cpu="ESP32-S3 (2x Xtensa LX7 240 MHz, PIE; ESP32-S3-WROOM-1 N8R8, 8 MB octal PSRAM)",
        cpu_cores=2,
        cpu_mhz=240,
        # 512 KB on-chip SRAM + 8 MB octal SPI PSRAM (module datasheet), the PSRAM mapped
        # through the cache MMU into the data address space. The serving arena stays in SRAM1
        # (as on the N8): the cycle model's latencies assume on-chip memory, and an arena in
        # PSRAM runs behind the cache at the 80 MHz bus. PSRAM holds what training adds.
        ram_bytes=512 * KIB + 8 * MIB,
        sram_region_bytes=416 * KIB,
        storage_bytes=8 * MIB,
        precisions=("int8",),
        runtimes=("mcu-sim", "tflm"),
        battery_mah=1000,
        link_kbps=2_000,
        simulated=True,
    ),
)

#: Names profiles had before they were named after boards: the same board under its old
#: name, so fleets, selectors ("profile:cortex-m4") and scripts written for them keep working.
ALIASES: dict[str, str] = {"cortex-m4": "nucleo-l4r5zi", "cortex-m7": "stm32h743"}

_BY_NAME = {p.name: p for p in _CATALOG}

CATALOG: dict[str, DeviceProfile] = {
    **_BY_NAME,
    **{
        alias: _BY_NAME[board].model_copy(update={"name": alias})
        for alias, board in ALIASES.items()
    },
}


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


#: Peak DRAM bandwidth per profile, bytes/s: bus width x transfer rate of the memory the SoC's
#: datasheet names (theoretical; what a decoder reaches is a fraction, which LM selection
#: calibrates from measured tokens/s). Why it matters: an LM's decode step reads every weight
#: and the whole KV cache once per token, so its speed is memory-bound.
#: Sources: Qualcomm Snapdragon 8 Gen 2 product brief (LPDDR5X 4200 MHz, 4 x 16-bit);
#: MediaTek Helio G85 spec page (LPDDR4X 1800 MHz, 2 x 16-bit); Raspberry Pi 5 / 4 product
#: briefs (LPDDR4X-4267 / LPDDR4-3200, 32-bit); Raspberry Pi 3B+ and Zero 2 W (LPDDR2 at
#: 900 MT/s, 32-bit, as in the BCM2837B0 / RP3A0 SiP); NVIDIA Jetson Nano module datasheet
#: (LPDDR4 64-bit, 25.6 GB/s). Microcontrollers are absent: their SRAM is not a DRAM bus and no
#: LM variant runs on them.
MEMORY_BANDWIDTH_BYTES_S: dict[str, int] = {
    "phone-flagship": 67_200_000_000,
    "phone-budget": 14_400_000_000,
    "rpi5": 17_066_000_000,
    "rpi4": 12_800_000_000,
    "rpi3": 3_600_000_000,
    "rpi-zero2w": 3_600_000_000,
    "jetson-nano": 25_600_000_000,
}


def memory_bandwidth(profile_name: str) -> int | None:
    """A profile's peak DRAM bandwidth in bytes/s, or ``None`` when the catalog has none."""
    return MEMORY_BANDWIDTH_BYTES_S.get(ALIASES.get(profile_name, profile_name))
