"""The one interface every on-device runtime implements, and the errors it raises.

Why an ABC with the checks in the base class: the refusals that protect a device (a bundle built
for another runtime, a precision the hardware cannot execute, an input of the wrong shape) must
behave the same whichever runtime serves, so they are written once here and each runtime only
fills in ``_load``/``_infer``. The agent keeps serving its previous variant when ``load`` raises.

This module imports neither numpy, torch nor onnxruntime: the agent's base install has none of
them, and a device pays only for the runtime it opens (see :func:`edgefleet.agent.runtimes.open_runtime`).

A bundle whose manifest input carries a ``frontend`` (an audio model: MFCC features in the
network) takes *raw audio* (``input.raw``): ``infer`` turns it into the network's input here,
once for every runtime (:meth:`Runtime.features`), in float on application processors and in
fixed point (q15, as CMSIS-DSP's ``arm_mfcc_q15``) on a microcontroller profile.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from edgefleet.bundle import Bundle
from edgefleet.frontend.spec import FrontendError, FrontendSpec
from edgefleet.profiles import DeviceProfile

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = [
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
]

#: Which device precisions a manifest precision needs. Dynamic int8 quantises activations at
#: run time from float ranges, so it needs float arithmetic as well as int8 kernels.
PRECISION_NEEDS: Mapping[str, frozenset[str]] = {
    "fp32": frozenset({"fp32"}),
    "fp16": frozenset({"fp16"}),
    "int8": frozenset({"int8"}),
    "int8-dynamic": frozenset({"int8", "fp32"}),
    # language models' weight-only quantization: weights dequantize into float arithmetic
    "int8-weight-only": frozenset({"fp32"}),
    "int4-weight-only": frozenset({"fp32"}),
}


class RuntimeLoadError(Exception):
    """Base class: this runtime refuses this bundle (or cannot run at all) on this device."""


class RuntimeUnavailableError(RuntimeLoadError):
    """The device's profile does not offer the runtime, or its package is not installed."""


class RuntimeMissingError(RuntimeLoadError):
    """The bundle carries no files for this runtime (built for another runtime)."""


class PrecisionUnsupportedError(RuntimeLoadError):
    """The bundle's precision needs arithmetic the device does not have (e.g. fp16 on an MCU)."""


class BundleFormatError(RuntimeLoadError):
    """The runtime's files are malformed, of an unknown version, or use an unsupported op."""


class BudgetExceededError(RuntimeLoadError):
    """The bundle does not fit the device (flash or SRAM); carries both numbers."""

    def __init__(self, resource: str, needed: int, available: int, detail: str = "") -> None:
        self.resource = resource
        self.needed = needed
        self.available = available
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"{resource}: bundle needs {needed} bytes but the device has {available} bytes "
            f"(over by {needed - available}){extra}"
        )


class TrainingUnsupportedError(RuntimeLoadError):
    """This runtime (or this variant's precision) cannot be fine-tuned on the device."""


class InferenceError(Exception):
    """Base class: this request cannot be served (the loaded variant stays loaded)."""


class NotLoadedError(InferenceError):
    """``infer`` was called before a bundle was loaded."""


class InputError(InferenceError):
    """The input does not match the variant's input spec."""


class InputShapeError(InputError):
    """The input's shape differs from the manifest's ``input.shape`` (batch dim excepted)."""


class InputDtypeError(InputError):
    """The input's dtype differs from the manifest's ``input.dtype``."""


@dataclass(frozen=True)
class MemoryUsage:
    """What a loaded runtime holds: ``weights`` (parameters, in flash on an MCU) and ``working``
    (activation arena, session/allocator state). ``method`` says how it was obtained."""

    weights: int
    working: int
    method: str

    @property
    def total(self) -> int:
        return self.weights + self.working


class Runtime(ABC):
    """Load a verified bundle, run batches, report memory; optionally expose a training hook.

    Subclasses set ``name`` (the key under the manifest's ``runtimes``) and implement
    ``_load``/``_infer``/``memory``. ``infer`` accepts any batch size: the manifest's input shape
    is recorded at batch 1 and its first dimension is the batch.
    """

    name: ClassVar[str]
    supports_training: ClassVar[bool] = False
    #: "wall" (measured around ``_infer``) or "cycle-model" (simulated device time).
    latency_source: ClassVar[str] = "wall"
    #: a cycle-model runtime whose ``_infer`` time already covers the frontend (e.g. from
    #: ``edgefleet.perf.mcu_latency_ms``) sets this, so ``infer`` does not add it twice
    latency_includes_frontend: ClassVar[bool] = False

    def __init__(self, profile: DeviceProfile, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.profile = profile
        self.threads = threads
        self._bundle: Bundle | None = None
        self._frontend: FrontendSpec | None = None
        self.last_latency_ms: float | None = None

    # -- loading ---------------------------------------------------------------------------

    def load(self, bundle: Bundle) -> None:
        """Check the bundle is for this runtime and device, then load it (replacing any other).

        On any refusal the previously loaded variant stays loaded and serving.
        """
        entry = self.runtime_entry(bundle)
        self.check_precision(bundle)
        frontend = _parse_frontend(bundle)
        self._load(bundle, entry)
        self._bundle = bundle
        self._frontend = frontend
        self.last_latency_ms = None

    def runtime_entry(self, bundle: Bundle) -> Mapping[str, Any]:
        runtimes = bundle.manifest.get("runtimes")
        if not isinstance(runtimes, Mapping) or self.name not in runtimes:
            have = ", ".join(sorted(runtimes)) if isinstance(runtimes, Mapping) else "none"
            raise RuntimeMissingError(
                f"variant {bundle.variant_id[:12]} has no {self.name} files "
                f"(it carries: {have or 'none'})"
            )
        entry = runtimes[self.name]
        if not isinstance(entry, Mapping):
            raise BundleFormatError(f"manifest runtimes.{self.name} is not an object")
        return entry

    def check_precision(self, bundle: Bundle) -> None:
        precision = str(bundle.manifest.get("precision", ""))
        needs = PRECISION_NEEDS.get(precision)
        if needs is None:
            raise PrecisionUnsupportedError(f"unknown variant precision {precision!r}")
        missing = needs - set(self.profile.precisions)
        if missing:
            raise PrecisionUnsupportedError(
                f"variant {bundle.variant_id[:12]} is {precision}, which needs "
                f"{'+'.join(sorted(needs))} arithmetic; device profile {self.profile.name!r} "
                f"supports only {', '.join(self.profile.precisions)}"
            )

    @abstractmethod
    def _load(self, bundle: Bundle, entry: Mapping[str, Any]) -> None:
        """Build the runtime state from the verified bytes; raise a RuntimeLoadError to refuse."""

    @property
    def loaded(self) -> bool:
        return self._bundle is not None

    @property
    def bundle(self) -> Bundle:
        if self._bundle is None:
            raise NotLoadedError(f"{self.name}: no variant loaded")
        return self._bundle

    @property
    def variant_id(self) -> str | None:
        return None if self._bundle is None else self._bundle.variant_id

    @property
    def input_spec(self) -> Mapping[str, Any]:
        spec = self.bundle.manifest.get("input")
        if not isinstance(spec, Mapping):
            raise BundleFormatError("manifest has no input spec")
        return spec

    # -- the signal frontend -----------------------------------------------------------------

    @property
    def frontend(self) -> FrontendSpec | None:
        """The loaded variant's frontend (``None``: the device feeds the network directly)."""
        return getattr(self, "_frontend", None) if self._bundle is not None else None

    @property
    def request_spec(self) -> Mapping[str, Any]:
        """What a request carries: ``input.raw`` (raw audio) with a frontend, else ``input``."""
        spec = self.input_spec
        raw = spec.get("raw") if self.frontend is not None else None
        return raw if isinstance(raw, Mapping) else spec

    @property
    def frontend_fixed_point(self) -> bool:
        """q15 on a microcontroller profile (its float MFCC would not be what it runs)."""
        return bool(self.profile.is_mcu)

    def is_raw(self, batch: npt.NDArray[Any]) -> bool:
        """``batch`` is raw audio for the frontend (not already the network's input):
        ``[N, T]`` as requests carry it, or dataset rows ``[N, 1, T]`` / ``[N, 1, 1, T]``."""
        if self.frontend is None:
            return False
        samples = int(self.request_spec["shape"][-1])
        shape = tuple(getattr(batch, "shape", ()))
        return len(shape) >= 2 and shape[-1] == samples and all(d == 1 for d in shape[1:-1])

    def features(self, batch: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The network's input for ``batch``: the frontend's features of raw audio (float32,
        the manifest's ``input.shape``), or ``batch`` itself when there is no frontend or it
        already is the network's input. Runtimes that bypass :meth:`infer` call this."""
        spec = self.frontend
        if spec is None or not self.is_raw(batch):
            return batch
        if self.frontend_fixed_point:
            from edgefleet.frontend.mfcc_q15 import mfcc_q15, to_float

            return to_float(mfcc_q15(batch, spec))
        from edgefleet.frontend.mfcc import mfcc

        return mfcc(batch, spec)

    def frontend_cycle_ms(self, batch_size: int) -> float:
        """Simulated device time of the frontend for ``batch_size`` clips: the coordinator's
        MCU cycle model over ``FrontendSpec.cost`` (``edgefleet.cycles.frontend_layers``), so
        the latency a simulated device reports is the one selection predicted."""
        spec = self.frontend
        if spec is None:
            return 0.0
        from edgefleet.cycles import frontend_layers, predict
        from edgefleet.perf import mcu_core

        cost = spec.cost(int(self.request_spec["shape"][-1]))
        layers = frontend_layers({**cost.macs, **cost.ops})
        return batch_size * predict(mcu_core(self.profile), layers, self.profile.cpu_mhz).ms

    # -- inference -------------------------------------------------------------------------

    def validate_input(self, batch: npt.NDArray[Any]) -> None:
        """Refuse a batch whose trailing shape or dtype differs from the manifest's input
        (with a frontend: raw audio, float32 or int16, or the network's input itself)."""
        if self.frontend is not None and self.is_raw(batch):
            dtype = str(getattr(batch, "dtype", type(batch).__name__))
            if dtype not in ("float32", "int16") or getattr(batch, "shape", (0,))[0] < 1:
                raise InputDtypeError(
                    f"raw audio dtype {dtype} is not float32 (samples / 32768) or int16"
                )
            return
        spec = self.input_spec
        want = [int(d) for d in spec["shape"]]
        shape = tuple(getattr(batch, "shape", ()))
        if len(shape) != len(want) or list(shape[1:]) != want[1:] or shape[0] < 1:
            raw = self.request_spec["shape"] if self.frontend is not None else None
            also = f" or raw audio [N, {', '.join(str(d) for d in raw[1:])}]" if raw else ""
            raise InputShapeError(
                f"input shape {list(shape)} does not match the variant's input "
                f"[N, {', '.join(str(d) for d in want[1:])}]{also} (N >= 1)"
            )
        dtype = str(getattr(batch, "dtype", type(batch).__name__))
        if dtype != str(spec.get("dtype", "float32")):
            raise InputDtypeError(
                f"input dtype {dtype} does not match the variant's input dtype {spec['dtype']}"
            )

    def infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Logits (float32, ``[N, classes]``) for a batch; sets ``last_latency_ms``."""
        if self._bundle is None:
            raise NotLoadedError(f"{self.name}: no variant loaded")
        self.validate_input(batch)
        start = time.perf_counter()
        raw = self.is_raw(batch)
        logits = self._infer(self.features(batch))  # the frontend's time is the device's too
        if self.latency_source == "wall":
            self.last_latency_ms = (time.perf_counter() - start) * 1000.0
        elif raw and self.last_latency_ms is not None and not self.latency_includes_frontend:
            self.last_latency_ms += self.frontend_cycle_ms(int(batch.shape[0]))
        return logits

    def predict(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.intp]:
        """Class indices (argmax of the logits; ties go to the lowest index)."""
        out: npt.NDArray[np.intp] = self.infer(batch).argmax(axis=1)
        return out

    @abstractmethod
    def _infer(self, batch: npt.NDArray[Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Run a validated batch."""

    # -- memory and training ---------------------------------------------------------------

    @abstractmethod
    def memory(self) -> MemoryUsage:
        """Bytes the loaded variant holds, split into weights and working memory."""

    def memory_bytes(self) -> int:
        return self.memory().total

    def trainable(self, scope: str = "full") -> Any:
        """A trainable model for on-device fine-tuning; runtimes without training refuse."""
        raise TrainingUnsupportedError(f"the {self.name} runtime is inference-only")

    def unload(self) -> None:
        """Drop the loaded variant and free what it holds."""
        self._bundle = None
        self._frontend = None


def _parse_frontend(bundle: Bundle) -> FrontendSpec | None:
    """The manifest's ``input.frontend`` checked before anything loads: a device must compute
    exactly the features the model was trained on, or refuse the bundle."""
    spec = bundle.manifest.get("input")
    if not isinstance(spec, Mapping) or "frontend" not in spec:
        return None
    try:
        frontend = FrontendSpec.from_dict(spec["frontend"])
    except FrontendError as exc:
        raise BundleFormatError(f"variant {bundle.variant_id[:12]}: {exc}") from exc
    raw = spec.get("raw")
    shape = raw.get("shape") if isinstance(raw, Mapping) else None
    if not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise BundleFormatError(
            f"variant {bundle.variant_id[:12]}: input.raw.shape must be [1, samples] "
            "with a frontend"
        )
    try:
        frontend.frames(shape[1])
    except FrontendError as exc:
        raise BundleFormatError(f"variant {bundle.variant_id[:12]}: {exc}") from exc
    return frontend
