"""Prometheus metrics of the coordinator.

Naming follows Prometheus conventions: ``edgefleet_`` prefix, base units
(seconds, bytes), ``_total`` counters, histograms for latencies. Label values
are bounded so a fleet of 100k devices stays scrapeable: no device id is ever a
label; profile names outside the catalog collapse to ``custom``; gRPC methods
and codes are finite sets.

Counters (registrations, heartbeats, RPCs) are per coordinator process; the
fleet gauges (devices by status/profile) are read from Redis, so every replica
reports the same fleet and dashboards aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from edgefleet import __version__
from edgefleet.catalog import CATALOG

# gRPC unary calls on loopback take ~1 ms; a coordinator under load tens of ms.
_RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def profile_label(name: str) -> str:
    """Catalog names and ``auto`` pass through; anything else is ``custom`` (bounded cardinality)."""
    return name if name in CATALOG or name == "auto" else "custom"


class CoordinatorMetrics:
    """Every metric the coordinator exports, in one registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge(
            "edgefleet_build_info", "Version of the running coordinator.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.devices = Gauge(
            "edgefleet_devices",
            "Registered devices by liveness status and profile (read from Redis).",
            ["status", "profile"],
            registry=r,
        )
        self.state_store_up = Gauge(
            "edgefleet_state_store_up",
            "1 when the last read of fleet state from Redis succeeded.",
            registry=r,
        )
        self.fleet_refresh_seconds = Gauge(
            "edgefleet_fleet_refresh_duration_seconds",
            "Time the last refresh of the fleet gauges took.",
            registry=r,
        )
        self.registrations = Counter(
            "edgefleet_device_registrations_total",
            "Register calls by outcome (created, reregistered, rejected) and profile.",
            ["outcome", "profile"],
            registry=r,
        )
        self.heartbeats = Counter(
            "edgefleet_heartbeats_total",
            "Heartbeat calls by outcome (ok, or the gRPC status code name in lower case).",
            ["outcome"],
            registry=r,
        )
        self.telemetry_records = Counter(
            "edgefleet_telemetry_records_total",
            "Telemetry records received from agents: accepted (new) or duplicate (a resend).",
            ["outcome"],
            registry=r,
        )
        self.rpcs = Counter(
            "edgefleet_grpc_server_handled_total",
            "gRPC calls completed, by service, method and status code.",
            ["service", "method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "edgefleet_grpc_server_handling_seconds",
            "Time to handle a gRPC call, by service and method.",
            ["service", "method"],
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        # Pre-create the series dashboards and alerts query, so they exist (as 0)
        # before the first event instead of being absent.
        for outcome in ("created", "reregistered", "rejected"):
            self.registrations.labels(outcome, "custom")
        self.heartbeats.labels("ok")
        for outcome in ("accepted", "duplicate"):
            self.telemetry_records.labels(outcome)
        self.state_store_up.set(0)

    def set_fleet(self, counts: dict[tuple[str, str], int]) -> None:
        """Replace the device gauges with ``{(status, profile): count}``.

        Series that vanished (a profile with no devices left) are removed, so a
        dashboard never shows a stale non-zero count.
        """
        bounded: dict[tuple[str, str], int] = {}
        for (status, profile), n in counts.items():
            key = (status, profile_label(profile))
            bounded[key] = bounded.get(key, 0) + n
        self.devices.clear()
        for status in ("online", "offline"):  # the fleet totals always exist
            self.devices.labels(status, "all")
        for (status, profile), n in bounded.items():
            self.devices.labels(status, profile).set(n)
        for status in ("online", "offline"):
            total = sum(n for (s, _), n in bounded.items() if s == status)
            self.devices.labels(status, "all").set(total)


def _split_method(full: str) -> tuple[str, str]:
    """'/edgefleet.v1.DeviceService/Register' -> ('edgefleet.v1.DeviceService', 'Register')."""
    _, service, method = [*full.split("/"), "", ""][:3]
    return service or "unknown", method or "unknown"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary call, whatever service it belongs to."""

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        behavior = handler.unary_unary
        metrics = self._metrics

        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await behavior(request, context)  # type: ignore[arg-type]
            except BaseException:
                found = context.code()
                code = found.name if isinstance(found, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                metrics.rpc_seconds.labels(service, method).observe(time.perf_counter() - start)
                metrics.rpcs.labels(service, method, code).inc()

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
