"""What a device does between heartbeats: serve, replay its workload, fine-tune, drain battery.

Why separate from ``session.py``: the session is the conversation with the coordinator; this is
the device's own work, and it must keep going (and keep being measured) whether or not the
coordinator is reachable. The session calls :meth:`AgentWork.start`/``stop`` around its loop,
:meth:`variant_activated` after an activation, and :meth:`sample` once per interval, which
turns the interval's measurements into buffered telemetry (so they survive a disconnect).

Fine-tuning runs in a thread on a copy of the served model; its outcome (or refusal) is
queued and written to telemetry by the next :meth:`sample`, because the telemetry buffer is
owned by the session's thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgefleet.agent.battery import measured_temperature_c
from edgefleet.agent.inference_server import InferenceServer
from edgefleet.metric_names import call_overhead_metric, variant_inferences_metric

if TYPE_CHECKING:
    from edgefleet.agent.artifacts import ArtifactCache
    from edgefleet.agent.battery import Battery
    from edgefleet.agent.config import AgentConfig
    from edgefleet.agent.finetune import FinetuneResult
    from edgefleet.agent.serving import Serving
    from edgefleet.agent.telemetry import TelemetryBuffer
    from edgefleet.agent.workload import Workload
    from edgefleet.fl.partition import Shard

__all__ = ["INFERENCE_FILE", "AgentWork"]

log = logging.getLogger("edgefleet.agent.work")

#: How long a stopping agent waits for its measurement / fine-tuning threads.
STOP_JOIN_SECONDS = 30.0

#: Written into the state dir once the endpoint listens: how local apps (and tests) find it.
INFERENCE_FILE = "inference.json"


class AgentWork:
    def __init__(
        self,
        config: AgentConfig,
        serving: Serving,
        artifacts: ArtifactCache,
        telemetry: TelemetryBuffer,
        battery: Battery,
    ) -> None:
        self.config = config
        self.serving = serving
        self.artifacts = artifacts
        self.telemetry = telemetry
        self.battery = battery
        self.server: InferenceServer | None = None
        self.workload: Workload | None = None
        self.shard: Shard | None = None
        self._finetune_started = False
        self._train_busy = 0.0
        self._results: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._overheads_measured: set[str] = set()

    async def start(self) -> None:
        cfg = self.config
        serving = self.serving
        bundle = await asyncio.to_thread(self.artifacts.load_current)
        runtime = self.artifacts.activation().runtime  # the record says what it ran with
        if bundle is not None and (refusal := serving.restore(bundle, runtime)):
            self.telemetry.event("variant_refused", refusal)
        if cfg.inference_port is not None:
            self.server = InferenceServer(serving, cfg.inference_port)
            port = await self.server.start()
            path = cfg.state_dir / INFERENCE_FILE
            path.write_text(json.dumps({"address": f"127.0.0.1:{port}", "port": port}))
        if cfg.local_data is not None and (cfg.workload_rate > 0 or cfg.finetune_scope):
            from edgefleet.agent.workload import Workload, load_local_data

            self.shard = await asyncio.to_thread(load_local_data, cfg.local_data)
            if cfg.workload_rate > 0:
                self.workload = Workload(serving, self.shard, cfg.workload_rate)
                self.workload.start()
        self._measure_overheads(None)
        if serving.variant_id:
            self.variant_activated()

    def _measure_overheads(self, only: set[str] | None) -> None:
        """Measure runtimes' per-call overhead in a thread; ``sample`` reports it."""
        profile = self.config.profile
        if only is not None:
            only -= self._overheads_measured
            if not only:
                return
        self._overheads_measured |= set(profile.runtimes) if only is None else only

        def run() -> None:
            from edgefleet.agent.runtimes.overhead import measure_call_overheads

            self._results.put(("overheads", measure_call_overheads(profile, only)))

        self._spawn(run, "call-overhead")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        """Run ``target`` in a daemon thread that :meth:`stop` waits for.

        Why waited for: these threads run onnxruntime or torch, whose C++ thread pools abort the
        whole process ("terminate called without an active exception", exit -6) if the
        interpreter exits while a call is in flight -- a SIGTERM right after start-up did."""
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    async def stop(self) -> None:
        if self.workload is not None:
            await asyncio.to_thread(self.workload.stop)
        if self.server is not None:
            await self.server.stop()
        for thread in self._threads:  # bounded: a fine-tune that outlives this is abandoned
            await asyncio.to_thread(thread.join, STOP_JOIN_SECONDS)

    def variant_activated(self) -> None:
        """Measure the serving runtime's call overhead if start-up skipped it (torch), and
        start the one fine-tuning run ``--finetune`` asked for, once a variant serves."""
        if self.serving.runtime_name:
            self._measure_overheads({self.serving.runtime_name})
        scope = self.config.finetune_scope
        if not scope or self._finetune_started or self.shard is None:
            return
        runtime = self.serving.runtime
        if runtime is None:
            return
        self._finetune_started = True
        shard = self.shard

        def run() -> None:
            from edgefleet.agent.finetune import FinetuneRefused, finetune

            try:
                result = finetune(runtime, shard, scope)
            except FinetuneRefused as exc:
                self._results.put(("refused", str(exc)))
                return
            except Exception as exc:  # a training bug must not take the agent down
                log.exception("fine-tuning failed")
                self._results.put(("refused", f"fine-tuning failed: {exc!r}"))
                return
            self._results.put(("done", result))

        self._spawn(run, "finetune")

    def sample(self) -> None:
        """Buffer this interval's inference, battery, temperature and fine-tuning figures."""
        telemetry = self.telemetry
        serving = self.serving
        stats = serving.take_interval()
        labels = {"variant": serving.variant_id[:12], "runtime": serving.runtime_name}
        if serving.variant_id:
            for name, value in stats.metrics().items():
                telemetry.metric(name, value, labels)
            served = variant_inferences_metric(serving.variant_id)
            telemetry.metric(served, serving.variant_requests, labels)
        busy = stats.busy_seconds
        while True:
            try:
                kind, payload = self._results.get_nowait()
            except queue.Empty:
                break
            if kind == "overheads":
                for runtime, ms in payload.items():
                    telemetry.metric(call_overhead_metric(runtime), ms, {"runtime": runtime})
            elif kind == "refused":
                log.error("fine-tuning refused: %s", payload)
                telemetry.event("finetune_refused", str(payload)[:1024])
            else:
                busy += self._report_finetune(payload)
        battery = self.battery
        battery.record(busy)
        if (percent := battery.percent) is not None:
            telemetry.metric("battery_percent", percent)
        if (temp := measured_temperature_c(self.config.profile)) is not None:
            telemetry.metric("temperature_c", temp)

    def _report_finetune(self, r: FinetuneResult) -> float:
        telemetry = self.telemetry
        log.info(
            "fine-tuned (%s): local accuracy %.3f -> %.3f, peak %d bytes (planned %d)",
            r.scope,
            r.accuracy_before,
            r.accuracy_after,
            r.measured_peak_bytes,
            r.plan.total,
        )
        labels = {"scope": r.scope}
        telemetry.metric("finetune_accuracy_before", r.accuracy_before, labels)
        telemetry.metric("finetune_accuracy_after", r.accuracy_after, labels)
        telemetry.metric("finetune_peak_bytes", r.measured_peak_bytes, labels)
        telemetry.metric("finetune_planned_bytes", r.plan.total, labels)
        telemetry.event(
            "finetune_done",
            f"{r.scope}: accuracy {r.accuracy_before:.3f} -> {r.accuracy_after:.3f}",
        )
        return r.busy_seconds
