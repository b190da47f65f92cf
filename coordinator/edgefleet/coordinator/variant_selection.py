"""Hardware-aware selection: which variant of a model each device should run, and why.

Core logic on plain objects (no Redis, no gRPC, no torch) so every decision can
be reproduced and explained. Two steps:

1. **Constraints** from the device profile. Each variant either fits or fails
   with the exact budget that is short and by how much:
   - precision: the device must support the variant's precision (an MCU: int8 only);
   - runtime: one of the variant's graphs must run in a runtime the device has;
   - storage: flash/disk >= the bundle's bytes (an MCU: >= its flash image);
   - memory: RAM >= weights + peak activations (from the memory planner)
     + the runtime's own overhead; on an MCU the weights stay in flash and the
     activation arena + the runtime's state must fit the largest *contiguous* SRAM
     region (an arena is one array; the STM32H743's 1 MB is a 512 KB bank and smaller ones);
   - latency: the predicted latency (see ``edgefleet.coordinator.latency``) <= the SLO, if any;
   - a variant with a signal frontend (an audio model: MFCC on the device) also needs the
     frontend's buffers in RAM/SRAM and, on an MCU, its constant tables in flash
     (``FrontendSpec.cost``); its cycles are in the MCU latency model's per-op counts.
2. **Policy** among what fits: take the most accurate variant; among those within
   ``accuracy_tolerance`` of it (default 0.5 points), the lowest predicted latency,
   then the fewest bytes. A practitioner's choice: a faster variant that is as
   good as makes no difference saves battery and headroom.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.cycles import Layer
from edgefleet.frontend.spec import FrontendCost
from edgefleet.profiles import DeviceProfile

KIB = 1024
MIB = 1024 * KIB

# Memory a runtime needs beyond the model's weights and activations (resident
# interpreter, libraries, allocator slack), measured as agent process RSS with
# the runtime loaded and no model. mcu-sim and tflm are TensorFlow Lite Micro's
# own state on the device, not the agent's Python process. litert: 9 MiB to
# import ai-edge-litert plus 3.4 MiB for an interpreter with XNNPACK (measured
# on this x86-64 host, 2026-12-03), rounded up.
RUNTIME_OVERHEAD_BYTES: dict[str, int] = {
    "torch": 180 * MIB,
    "onnxruntime": 40 * MIB,
    "litert": 16 * MIB,
    "tflm": 16 * KIB,
    "mcu-sim": 16 * KIB,
}
# Preference when two runtimes predict the same latency: the device's own (the
# order its profile lists them in), then the lighter one.
RUNTIME_ORDER = ("mcu-sim", "tflm", "litert", "onnxruntime", "torch")
# Runtimes whose latency is simulated microcontroller time from the cycle model
# (never host wall time): the same prediction the agent reports.
CYCLE_MODEL_RUNTIMES = frozenset({"mcu-sim", "tflm"})

PRECISION_FAMILY = {
    "fp32": "fp32",
    "fp16": "fp16",
    "int8": "int8",
    "int8-static": "int8",
    "int8-dynamic": "int8",
}


@dataclass(frozen=True)
class VariantFacts:
    """What selection needs to know about one variant (from its manifest)."""

    id: str
    model: str
    recipe: str
    precision: str
    bundle_bytes: int
    weight_bytes: int
    peak_memory_bytes: int
    accuracy: float
    macs: int
    runtimes: tuple[str, ...]
    host_latency_ms: dict[str, float] = field(default_factory=dict)  # per runtime
    mcu_flash_bytes: int | None = None
    #: of ``mcu_flash_bytes``, the runtime's code (TFLM core + kernels, ``edgefleet.mcu_flash``)
    mcu_code_bytes: int | None = None
    #: per-op work of the int8 graph (manifest ``metrics.ops``), for the MCU cycle model
    layers: tuple[Layer, ...] = ()
    #: what the device's signal frontend costs per inference (``None``: no frontend)
    frontend: FrontendCost | None = None


@dataclass(frozen=True)
class Policy:
    accuracy_tolerance: float = 0.005  # 0.5 percentage points
    latency_slo_ms: float | None = None
    #: the variant the device runs now: kept while it fits, is within the accuracy tolerance
    #: and within ``INCUMBENT_MARGIN`` of the fastest, so latency noise does not flap a fleet
    #: between near-equal variants (every flip is a download and an activation)
    incumbent: str = ""


#: how much slower (predicted) the running variant may be than the fastest before it is replaced
INCUMBENT_MARGIN = 0.25


@dataclass(frozen=True)
class Verdict:
    variant: VariantFacts
    runtime: str | None
    predicted_latency_ms: float | None
    failures: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class Selection:
    winner: Verdict | None
    verdicts: tuple[Verdict, ...]
    reason: str


class LatencyPredictor:
    """Anything that predicts a variant's latency in one runtime on one device."""

    def predict_ms(self, variant: VariantFacts, runtime: str) -> float:  # pragma: no cover
        raise NotImplementedError


def human_bytes(n: int) -> str:
    size = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            text = f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
            return ("-" if n < 0 else "") + text
        size /= 1024
    return f"{n} B"


def _memory_need(v: VariantFacts, runtime: str, profile: DeviceProfile) -> int:
    weights = 0 if profile.is_mcu else v.weight_bytes  # an MCU runs its weights from flash
    frontend = v.frontend.ram_bytes if v.frontend is not None else 0
    return weights + v.peak_memory_bytes + RUNTIME_OVERHEAD_BYTES.get(runtime, 0) + frontend


def _frontend_part(v: VariantFacts) -> str:
    """`` + frontend N`` for the memory messages (empty without a frontend)."""
    return "" if v.frontend is None else f" + frontend {human_bytes(v.frontend.ram_bytes)}"


def frontend_share(v: VariantFacts, profile: DeviceProfile) -> str:
    """What the frontend takes of this device, for explain: SRAM/RAM buffers, flash tables
    on an MCU, and its share of the predicted MCU latency (the cycle model's frontend layers)."""
    if v.frontend is None:
        return ""
    c = v.frontend
    parts = [f"{human_bytes(c.ram_bytes)} {'sram' if profile.is_mcu else 'ram'}"]
    if profile.is_mcu:
        from edgefleet.cycles import predict
        from edgefleet.perf import mcu_core

        whole = predict(mcu_core(profile), v.layers, profile.cpu_mhz).ms if v.layers else 0.0
        mine = predict(mcu_core(profile), _frontend_layers(c), profile.cpu_mhz).ms
        share = f" ({mine / whole:.0%} of {whole:.3g} ms)" if whole > 0 else ""
        parts += [f"{human_bytes(c.flash_bytes)} flash", f"{mine:.3g} ms{share}"]
    parts.append(f"{c.total_macs / 1e6:.2f}M MACs")
    return "frontend mfcc: " + ", ".join(parts)


def flash_parts(v: VariantFacts, profile: DeviceProfile) -> str:
    """`` (model N + TFLM code N + frontend tables N)``: what an MCU's flash holds of a variant
    (the code from the build's ``edgefleet.mcu_flash`` image; empty off MCUs)."""
    if not profile.is_mcu:
        return ""
    parts = []
    if v.mcu_flash_bytes and v.mcu_code_bytes:
        parts += [
            f"model {human_bytes(v.mcu_flash_bytes - v.mcu_code_bytes)}",
            f"TFLM code {human_bytes(v.mcu_code_bytes)}",
        ]
    if v.frontend is not None:
        parts.append(f"frontend tables {human_bytes(v.frontend.flash_bytes)}")
    return f" ({' + '.join(parts)})" if parts else ""


def _frontend_layers(c: FrontendCost) -> tuple[Layer, ...]:
    from edgefleet.cycles import frontend_layers

    return frontend_layers({**c.macs, **c.ops})


def _memory_failure(v: VariantFacts, runtime: str, profile: DeviceProfile) -> str:
    need, overhead = _memory_need(v, runtime, profile), RUNTIME_OVERHEAD_BYTES.get(runtime, 0)
    has = profile.largest_ram_region
    if profile.is_mcu:
        region = (
            "" if has == profile.ram_bytes else f" contiguous (of {human_bytes(profile.ram_bytes)})"
        )
        return (
            f"sram: needs {human_bytes(need)} (arena {human_bytes(v.peak_memory_bytes)} + {runtime} "
            f"{human_bytes(overhead)}{_frontend_part(v)}), has {human_bytes(has)}{region} "
            f"(short by {human_bytes(need - has)})"
        )
    return (
        f"ram: needs {human_bytes(need)} (weights {human_bytes(v.weight_bytes)} + "
        f"activations {human_bytes(v.peak_memory_bytes)} + {runtime} "
        f"{human_bytes(overhead)}{_frontend_part(v)}), has "
        f"{human_bytes(has)} (short by {human_bytes(need - has)})"
    )


def judge(
    profile: DeviceProfile, v: VariantFacts, predictor: LatencyPredictor, policy: Policy
) -> Verdict:
    """Check one variant against one device; name every budget it breaks."""
    failures: list[str] = []
    family = PRECISION_FAMILY.get(v.precision, v.precision)
    if family not in profile.precisions:
        failures.append(
            f"precision: {v.precision} not supported (device: {', '.join(profile.precisions)})"
        )
    usable = [r for r in RUNTIME_ORDER if r in v.runtimes and r in profile.runtimes]
    if not usable:
        failures.append(
            f"runtime: variant has {', '.join(v.runtimes) or 'none'}, "
            f"device runs {', '.join(profile.runtimes) or 'none'}"
        )
    storage_need = v.mcu_flash_bytes if profile.is_mcu and v.mcu_flash_bytes else v.bundle_bytes
    tables = v.frontend.flash_bytes if profile.is_mcu and v.frontend is not None else 0
    if storage_need + tables > profile.storage_bytes:
        kind = "flash" if profile.is_mcu else "storage"
        of = flash_parts(v, profile) if profile.is_mcu else ""
        failures.append(
            f"{kind}: needs {human_bytes(storage_need + tables)}{of}, has "
            f"{human_bytes(profile.storage_bytes)}"
            f" (short by {human_bytes(storage_need + tables - profile.storage_bytes)})"
        )
    runtime: str | None = None
    latency: float | None = None
    if usable:
        # among runtimes whose memory fits, the fastest; else report the lightest's shortfall
        room = profile.largest_ram_region
        fitting = [r for r in usable if _memory_need(v, r, profile) <= room]
        if not fitting:
            r = min(usable, key=lambda x: _memory_need(v, x, profile))
            failures.append(_memory_failure(v, r, profile))
            fitting = [r]
        runtime = min(
            fitting,
            key=lambda r: (
                predictor.predict_ms(v, r),
                profile.runtimes.index(r),
                RUNTIME_ORDER.index(r),
            ),
        )
        latency = predictor.predict_ms(v, runtime)
        if policy.latency_slo_ms is not None and latency > policy.latency_slo_ms:
            failures.append(
                f"latency: predicted {latency:.3g} ms > SLO {policy.latency_slo_ms:.3g} ms"
            )
    return Verdict(v, runtime, latency, tuple(failures))


def select(
    profile: DeviceProfile,
    variants: list[VariantFacts],
    predictor: LatencyPredictor,
    policy: Policy | None = None,
) -> Selection:
    """Judge every variant and pick by the policy above. ``winner`` is None if nothing fits."""
    policy = policy or Policy()
    verdicts = tuple(judge(profile, v, predictor, policy) for v in variants)
    fits = [v for v in verdicts if v.fits]
    if not variants:
        return Selection(None, verdicts, "the model has no variants yet (edgefleet models build)")
    if not fits:
        return Selection(None, verdicts, _why_nothing_fits(verdicts))
    best = max(v.variant.accuracy for v in fits)
    pool = [v for v in fits if v.variant.accuracy >= best - policy.accuracy_tolerance - 1e-12]
    winner = min(
        pool, key=lambda v: (v.predicted_latency_ms or 0.0, v.variant.bundle_bytes, v.variant.id)
    )
    why = "for the lowest predicted latency"
    kept = next((v for v in pool if policy.incumbent and v.variant.id == policy.incumbent), None)
    if kept is not None and kept is not winner:
        fastest = winner.predicted_latency_ms or 0.0
        if (kept.predicted_latency_ms or 0.0) <= fastest * (1 + INCUMBENT_MARGIN):
            winner = kept
            why = (
                f"kept as the running variant (within {INCUMBENT_MARGIN:.0%} of the fastest, "
                f"{fastest:.3g} ms); predicted latency"
            )
    reason = (
        f"{len(fits)} of {len(verdicts)} variants fit; most accurate {best:.2%}; "
        f"{len(pool)} within {policy.accuracy_tolerance * 100:.1f} pt of it; "
        f"chose {winner.variant.recipe} ({winner.variant.accuracy:.2%}) {why} "
        f"{winner.predicted_latency_ms:.3g} ms on {winner.runtime}"
    )
    stored = winner.variant.mcu_flash_bytes
    if profile.is_mcu and stored:
        v = winner.variant
        flash = stored + (v.frontend.flash_bytes if v.frontend is not None else 0)
        reason += (
            f"; flash {human_bytes(flash)} of {human_bytes(profile.storage_bytes)}"
            f"{flash_parts(v, profile)}"
        )
    share = frontend_share(winner.variant, profile)
    return Selection(winner, verdicts, f"{reason}; {share}" if share else reason)


def _why_nothing_fits(verdicts: tuple[Verdict, ...]) -> str:
    """Name the budget that blocks the variant closest to fitting."""
    closest = min(verdicts, key=lambda v: (len(v.failures), v.variant.bundle_bytes))
    return (
        f"no variant fits this device; closest is {closest.variant.recipe} "
        f"({closest.variant.id[:12]}): {'; '.join(closest.failures)}"
    )
