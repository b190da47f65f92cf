"""Detect the resources of the machine the agent runs on (``--profile auto``).

Uses psutil and /proc, the same sources an operator would read by hand, and
reports only what it measured: a field it cannot read gets a conservative
value rather than a guess that could make selection over-commit the device.
"""

from __future__ import annotations

import contextlib
import importlib.util
import platform
import re
from pathlib import Path

import psutil

from edgefleet.profiles import DeviceClass, DeviceProfile

_CPUINFO = Path("/proc/cpuinfo")


def _cpu_model() -> str:
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Hardware", "Model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()[:128]
    return platform.machine()


def _cpu_mhz() -> int:
    freq = None
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, FileNotFoundError):
        freq = None
    if freq is not None and freq.max > 0:
        return int(freq.max)
    if freq is not None and freq.current > 0:
        return int(freq.current)
    try:
        found = re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", _CPUINFO.read_text(), re.MULTILINE)
    except OSError:
        found = []
    return int(max(float(x) for x in found)) if found else 1000


def _precisions(arch: str) -> tuple[str, ...]:
    flags = ""
    with contextlib.suppress(OSError):
        flags = _CPUINFO.read_text()
    has_fp16 = arch in ("aarch64", "arm64") or re.search(r"\b(f16c|avx512fp16)\b", flags)
    return ("fp32", "fp16", "int8") if has_fp16 else ("fp32", "int8")


def _runtimes() -> tuple[str, ...]:
    """Runtimes this host can actually load, checked without importing them."""
    found = []
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
    if importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnxruntime")
    if importlib.util.find_spec("ai_edge_litert") is not None:  # extra agent-litert
        found.append("litert")
    return tuple(found)


def detect_host_profile(storage_path: str | Path = "/") -> DeviceProfile:
    """Measure this host. ``storage_path`` is where the agent keeps its bundles."""
    arch = platform.machine().lower() or "unknown"
    return DeviceProfile.model_validate(
        {
            "name": "auto",
            "device_class": DeviceClass.SERVER if arch == "x86_64" else DeviceClass.SBC,
            "arch": arch,
            "cpu": _cpu_model(),
            "cpu_cores": psutil.cpu_count(logical=True) or 1,
            "cpu_mhz": _cpu_mhz(),
            "ram_bytes": psutil.virtual_memory().total,
            "storage_bytes": psutil.disk_usage(str(storage_path)).total,
            "precisions": _precisions(arch),
            "runtimes": _runtimes(),
            "battery_mah": 0,
            "link_kbps": 0,
            "simulated": False,
        }
    )
