"""On-device runtimes behind one interface: ``torch``, ``onnxruntime``, ``litert``, ``tflm`` and
``mcu-sim``.

Use :func:`open_runtime` with the device's profile, then ``load(bundle)`` a verified bundle and
``infer(batch)``. Importing this package imports no numerical library: each implementation
module is imported only when a runtime of that kind is opened, so a device carries (and pays
the memory of) exactly the runtime it uses. Extras: ``agent-onnx`` (numpy + onnxruntime),
``agent-torch`` (torch + safetensors + numpy), ``agent-mcu`` (numpy), ``agent-tflm`` (numpy +
tflite-micro: TensorFlow Lite Micro's interpreter), ``agent-litert`` (numpy + ai-edge-litert).
"""

from __future__ import annotations

import importlib
from typing import Any

from edgefleet.agent.runtimes.base import (
    PRECISION_NEEDS,
    BudgetExceededError,
    BundleFormatError,
    InferenceError,
    InputDtypeError,
    InputError,
    InputShapeError,
    MemoryUsage,
    NotLoadedError,
    PrecisionUnsupportedError,
    Runtime,
    RuntimeLoadError,
    RuntimeMissingError,
    RuntimeUnavailableError,
    TrainingUnsupportedError,
)
from edgefleet.profiles import DeviceProfile

__all__ = [
    "IMPLEMENTATIONS",
    "PRECISION_NEEDS",
    "BudgetExceededError",
    "BundleFormatError",
    "InferenceError",
    "InputDtypeError",
    "InputError",
    "InputShapeError",
    "MemoryUsage",
    "NotLoadedError",
    "PrecisionUnsupportedError",
    "Runtime",
    "RuntimeLoadError",
    "RuntimeMissingError",
    "RuntimeUnavailableError",
    "TrainingUnsupportedError",
    "open_runtime",
]

#: runtime name -> (module, class, pip extra that provides its dependencies)
IMPLEMENTATIONS: dict[str, tuple[str, str, str]] = {
    "torch": ("edgefleet.agent.runtimes.torch_rt", "TorchRuntime", "agent-torch"),
    "onnxruntime": ("edgefleet.agent.runtimes.ort", "OrtRuntime", "agent-onnx"),
    "mcu-sim": ("edgefleet.agent.runtimes.mcu_sim", "McuSimRuntime", "agent-mcu"),
    "tflm": ("edgefleet.agent.runtimes.tflm", "TflmRuntime", "agent-tflm"),
    "litert": ("edgefleet.agent.runtimes.litert", "LiteRtRuntime", "agent-litert"),
}


def open_runtime(name: str, profile: DeviceProfile, **options: Any) -> Runtime:
    """A fresh (empty) runtime ``name`` for a device with ``profile``.

    Refuses (``RuntimeUnavailableError``) a runtime the profile does not list, an unknown
    name, or one whose packages are not installed, naming the extra to install.
    """
    impl = IMPLEMENTATIONS.get(name)
    if impl is None:
        raise RuntimeUnavailableError(
            f"unknown runtime {name!r} (known: {', '.join(sorted(IMPLEMENTATIONS))})"
        )
    if name not in profile.runtimes:
        raise RuntimeUnavailableError(
            f"device profile {profile.name!r} does not run {name} "
            f"(it runs: {', '.join(profile.runtimes) or 'nothing'})"
        )
    module_name, class_name, extra = impl
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"the {name} runtime needs packages that are not installed ({exc.name or exc}); "
            f"install edgefleet[{extra}]"
        ) from exc
    cls: type[Runtime] = getattr(module, class_name)
    return cls(profile, **options)
