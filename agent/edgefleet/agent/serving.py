"""The variant a device serves: one loaded runtime, swapped atomically on activation.

Why a separate object rather than letting the inference endpoint open runtimes itself: the
reconciler decides *when* a variant may become active, and it must learn *before* activating
whether the device can actually run it (wrong runtime, unsupported precision, an MCU arena
over its SRAM). The update machine (``edgefleet.agent.update``) drives it in two
steps: :meth:`Serving.stage` builds and loads a fresh runtime next to the one serving (a
refusal leaves the previous variant serving), and only once the commit is persisted in the
activation record does :meth:`Serving.swap` swap the two under a lock, so a request is always
answered by exactly one complete, committed variant. Which runtime serves the active variant
is the activation record's to remember, not this object's.

Every request goes through :meth:`Serving.infer`, which is also where the per-interval
measurements the coordinator relays are taken (``inference_*`` metric names, see
``coordinator/edgefleet/coordinator/metrics.py::relay_device_metric``): median latency, request and error counts,
error rate, and accuracy over requests that carried labels.

Requests are serialised by a lock: a small device runs one inference at a time (and the
runtimes are not all safe to call concurrently), so queueing here is the honest model.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.desired import Desired
from edgefleet.agent.runtimes import (
    InferenceError,
    InputError,
    NotLoadedError,
    Runtime,
    RuntimeLoadError,
    open_runtime,
)
from edgefleet.bundle import Bundle
from edgefleet.profiles import DeviceProfile

if TYPE_CHECKING:  # numpy only where a runtime is loaded
    import numpy as np
    import numpy.typing as npt

    from edgefleet.agent.generation import GeneratedToken, GenerateParams

__all__ = ["LATENCY_BOUNDS_MS", "InferResult", "IntervalStats", "Serving"]

log = logging.getLogger("edgefleet.agent.serving")

#: Upper bounds (ms) of the local latency histogram: from an MCU's sub-ms kernels to a
#: struggling SBC. Cumulative counts, Prometheus-style, so they can be exported later as is.
LATENCY_BOUNDS_MS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)
#: Written by agents before the activation record (``edgefleet.agent.activation``) held the runtime;
#: read once by the record when a state dir has no activation record yet, then removed.
LEGACY_SERVING_FILE = "serving.json"


@dataclass(frozen=True)
class InferResult:
    logits: np.ndarray[Any, np.dtype[np.float32]]
    argmax: list[int]
    latency_ms: float
    latency_source: str
    variant_id: str
    runtime: str


@dataclass(frozen=True)
class IntervalStats:
    """One telemetry interval's inference measurements (what ``_sample`` buffers)."""

    requests: int
    errors: int
    rejected: int
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    accuracy: float | None
    labelled: int
    seconds: float
    busy_seconds: float  # device time spent inferring (drives the battery model)
    #: language-model generations (``Generate``): median time to first token and decode rate
    generations: int = 0
    generated_tokens: int = 0
    ttft_ms_p50: float | None = None
    tokens_per_s_p50: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def metrics(self) -> dict[str, float]:
        """Agent metric names as the coordinator relays and the rollout gates read them."""
        out = {
            "inference_count": float(self.requests),
            "inference_errors": float(self.errors),
            "inference_rejected": float(self.rejected),
            "inference_throughput_rps": self.requests / self.seconds if self.seconds else 0.0,
        }
        if self.error_rate is not None:
            out["inference_error_rate"] = self.error_rate
        if self.latency_ms_p50 is not None:
            out["inference_latency_ms"] = self.latency_ms_p50
        if self.latency_ms_p95 is not None:
            out["inference_latency_p95_ms"] = self.latency_ms_p95
        if self.accuracy is not None:
            out["inference_accuracy"] = self.accuracy
        if self.generations:
            out["generation_count"] = float(self.generations)
            out["generation_tokens"] = float(self.generated_tokens)
        if self.ttft_ms_p50 is not None:
            out["generation_ttft_ms"] = self.ttft_ms_p50
        if self.tokens_per_s_p50 is not None:
            out["generation_tokens_per_s"] = self.tokens_per_s_p50
        return out


@dataclass
class _Counters:
    started: float = field(default_factory=time.monotonic)
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    rejected: int = 0
    correct: int = 0
    labelled: int = 0
    busy_seconds: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    generations: int = 0
    generated_tokens: int = 0


class Serving:
    """Holds the active runtime; thread-safe (the endpoint and workload call from threads)."""

    def __init__(
        self,
        profile: DeviceProfile,
        state_dir: Path | None = None,
        threads: int = 1,
        opener: Callable[[str, DeviceProfile], Runtime] | None = None,
    ) -> None:
        self.profile = profile
        self.state_dir = state_dir
        self.threads = threads
        self._open = opener or (lambda name, p: open_runtime(name, p, threads=threads))
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._staged: Runtime | None = None
        self._interval = _Counters()
        self.total_requests = 0
        self.total_errors = 0
        self.total_rejected = 0
        #: Requests the active variant has served since it was loaded: the evidence a rollout
        #: gate needs before it may judge the variant (``edgefleet.metric_names``).
        self.variant_requests = 0
        self.histogram = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        self.last_refusal = ""
        #: variant id -> the context limit the coordinator's LM selection gave this device
        self._context_limits: dict[str, int] = {}

    # -- activation --------------------------------------------------------------------

    @property
    def runtime(self) -> Runtime | None:
        return self._runtime

    @property
    def variant_id(self) -> str:
        rt = self._runtime
        return (rt.variant_id or "") if rt is not None else ""

    @property
    def runtime_name(self) -> str:
        rt = self._runtime
        return rt.name if rt is not None else ""

    def choose_runtime(self, bundle: Bundle, wanted: str = "") -> str:
        """The runtime to serve ``bundle`` with: the one the coordinator named, else the first
        of the profile's runtimes that the bundle carries files for (profile order = the
        device's preference)."""
        if wanted:
            return wanted
        carried = bundle.manifest.get("runtimes")
        carried = carried if isinstance(carried, dict) else {}
        for name in self.profile.runtimes:
            if name in carried:
                return name
        return self.profile.runtimes[0] if self.profile.runtimes else ""

    def stage(self, bundle: Bundle, runtime: str = "") -> str | None:
        """Load ``bundle`` into a fresh runtime next to the one serving; a reason on refusal.

        Nothing is served from it until :meth:`swap`; :meth:`abort` drops it.
        """
        self.abort()
        name = self.choose_runtime(bundle, runtime)
        if not name:
            return self._refuse(f"device profile {self.profile.name!r} lists no runtime")
        try:
            fresh = self._open(name, self.profile)
            fresh.load(bundle)
        except RuntimeLoadError as exc:  # includes RuntimeUnavailableError
            return self._refuse(f"cannot serve variant {bundle.variant_id[:12]} with {name}: {exc}")
        self._staged = fresh
        return None

    def swap(self) -> None:
        """Serve the staged runtime (the old one is unloaded once no request holds it)."""
        fresh, self._staged = self._staged, None
        if fresh is None:
            return
        with self._lock:
            old, self._runtime = self._runtime, fresh
            self.variant_requests = 0
        if old is not None:
            old.unload()
        self.last_refusal = ""
        self._forget_legacy()
        log.info("serving variant %s with %s", (fresh.variant_id or "")[:12], fresh.name)

    def abort(self) -> None:
        """Drop a staged runtime that will not be served."""
        staged, self._staged = self._staged, None
        if staged is not None:
            staged.unload()

    def load(self, bundle: Bundle, runtime: str = "") -> str | None:
        """Stage and swap at once (start-up, tests); a reason string on refusal.

        The old runtime keeps serving until the new one has loaded completely.
        """
        refusal = self.stage(bundle, runtime)
        if refusal is None:
            self.swap()
        return refusal

    def unload(self) -> None:
        """Serve nothing: requests get NotLoadedError (FAILED_PRECONDITION) from now on."""
        self.abort()
        with self._lock:
            old, self._runtime = self._runtime, None
            self.variant_requests = 0
        if old is None:
            return
        old.unload()
        self._forget_legacy()
        log.info("unloaded variant %s: serving nothing", (old.variant_id or "")[:12])

    def accept(self, bundle: Bundle, desired: Desired) -> str | None:
        """Serve the bundle now with the runtime ``desired`` names, or say why not."""
        return self.load(bundle, desired.runtime)

    def restore(self, bundle: Bundle | None, runtime: str = "") -> str | None:
        """At start-up: serve the variant the activation record says is active, with the
        runtime the record holds for it."""
        if bundle is None:
            return None
        return self.load(bundle, runtime)

    def limit_context(self, variant_id: str, limit: int) -> None:
        """Hold a language-model variant to ``limit`` positions (0: its manifest's context).

        Why from the coordinator and not the manifest: the manifest says what the model was
        trained at, LM selection what *this* device holds (its RAM for the KV cache, its decode
        speed), and the rollout sends that with the desired state. Kept per variant, so it
        applies the moment the variant is served and a rollback finds its own limit again.
        """
        if not variant_id:
            return
        if limit > 0:
            if len(self._context_limits) >= 16:  # bounded: only recent variants matter
                self._context_limits.clear()
            self._context_limits[variant_id] = limit
        else:
            self._context_limits.pop(variant_id, None)

    def context_limit(self) -> int:
        """Positions the active language model may hold: the smaller of its manifest's
        context and the coordinator's limit; 0 when no language model is active."""
        spec = getattr(self._runtime, "language_model", None)
        if spec is None:
            return 0
        cap = self._context_limits.get(self.variant_id, 0)
        return min(spec.context, cap) if cap > 0 else int(spec.context)

    def _refuse(self, reason: str) -> str:
        self.last_refusal = reason
        log.error("%s; still serving %s", reason, self.variant_id[:12] or "nothing")
        return reason

    def _forget_legacy(self) -> None:
        if self.state_dir is not None:
            (self.state_dir / LEGACY_SERVING_FILE).unlink(missing_ok=True)

    # -- requests ----------------------------------------------------------------------

    def input_shape(self) -> list[int]:
        """The shape a request carries at batch 1 (raises NotLoadedError): the raw audio for a
        variant with a signal frontend (the runtime computes the features), else the
        network's input."""
        rt = self._runtime
        if rt is None:
            raise NotLoadedError("no variant is active on this device yet")
        return [int(d) for d in rt.request_spec["shape"]]

    def infer(self, batch: npt.NDArray[Any], labels: Sequence[int] | None = None) -> InferResult:
        """Run ``batch`` on the active variant and account for it.

        Raises ``NotLoadedError`` (nothing active; not counted), ``InputError`` (counted as
        rejected: the caller's fault, so it does not count against the variant in rollout
        gates) or ``InferenceError`` (counted as an error).
        """
        with self._lock:
            rt = self._runtime
            if rt is None:
                raise NotLoadedError("no variant is active on this device yet")
            c = self._interval
            try:
                logits = rt.infer(batch)
            except InputError:
                c.rejected += 1
                self.total_rejected += 1
                raise
            except Exception as exc:
                c.requests += 1
                c.errors += 1
                self.variant_requests += 1
                self.total_requests += 1
                self.total_errors += 1
                if isinstance(exc, InferenceError):
                    raise
                raise InferenceError(f"{rt.name} failed: {exc!r}") from exc
            latency = float(rt.last_latency_ms or 0.0)
            argmax = [int(i) for i in logits.argmax(axis=1)]
            c.requests += 1
            self.variant_requests += 1
            self.total_requests += 1
            c.latencies.append(latency)
            c.busy_seconds += latency / 1000.0
            self.histogram[_bucket(latency)] += 1
            if labels is not None and len(labels) == len(argmax):
                c.labelled += len(labels)
                c.correct += sum(int(a == int(b)) for a, b in zip(argmax, labels, strict=True))
            return InferResult(
                logits, argmax, latency, rt.latency_source, rt.variant_id or "", rt.name
            )

    def generate(
        self, params: GenerateParams, cancelled: Callable[[], bool] = lambda: False
    ) -> Iterator[GeneratedToken]:
        """Generate with the active language-model variant, one token per item.

        Holds the serving lock for the whole generation (a small device decodes for one caller
        at a time). Raises ``NotLoadedError``, ``NotLanguageModelError`` (a classifier is
        active), ``InputError`` (a bad field; counted as rejected) or ``InferenceError``.
        """
        from dataclasses import replace

        from edgefleet.agent.generation import NotLanguageModelError, check_params, generate

        with self._lock:
            rt = self._runtime
            if rt is None:
                raise NotLoadedError("no variant is active on this device yet")
            spec = getattr(rt, "language_model", None)
            if spec is None:
                raise NotLanguageModelError(
                    f"the active variant {self.variant_id[:12]} is not a language model"
                )
            cap = self._context_limits.get(rt.variant_id or "", 0)
            if 0 < cap < spec.context:  # the device's own limit, from selection
                spec = replace(spec, context=cap)
            c = self._interval
            try:
                params = check_params(params, spec.context)
            except InputError:
                c.rejected += 1
                self.total_rejected += 1
                raise
            c.requests += 1
            self.variant_requests += 1
            self.total_requests += 1
            started = time.perf_counter()
            try:
                for token in generate(rt.lm_step, spec, params, cancelled):  # type: ignore[attr-defined]
                    c.generated_tokens += 1
                    if token.finish_reason:
                        c.generations += 1
                        c.ttft_ms.append(token.time_to_first_token_ms)
                        if token.tokens_per_second > 0:
                            c.tokens_per_s.append(token.tokens_per_second)
                    yield token
            except InferenceError:
                c.errors += 1
                self.total_errors += 1
                raise
            except Exception as exc:
                c.errors += 1
                self.total_errors += 1
                raise InferenceError(f"{rt.name} failed while generating: {exc!r}") from exc
            finally:
                c.busy_seconds += time.perf_counter() - started

    def take_interval(self) -> IntervalStats:
        """This interval's figures; starts the next interval."""
        with self._lock:
            c, self._interval = self._interval, _Counters()
        lat = sorted(c.latencies)
        return IntervalStats(
            requests=c.requests,
            errors=c.errors,
            rejected=c.rejected,
            latency_ms_p50=statistics.median(lat) if lat else None,
            latency_ms_p95=lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
            accuracy=c.correct / c.labelled if c.labelled else None,
            labelled=c.labelled,
            seconds=time.monotonic() - c.started,
            busy_seconds=c.busy_seconds,
            generations=c.generations,
            generated_tokens=c.generated_tokens,
            ttft_ms_p50=statistics.median(c.ttft_ms) if c.ttft_ms else None,
            tokens_per_s_p50=statistics.median(c.tokens_per_s) if c.tokens_per_s else None,
        )


def _bucket(latency_ms: float) -> int:
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if latency_ms <= bound:
            return i
    return len(LATENCY_BOUNDS_MS)
