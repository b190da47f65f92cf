"""Prometheus metrics of the coordinator.

Naming follows Prometheus conventions: ``edgefleet_`` prefix, base units
(seconds, bytes), ``_total`` counters, histograms for latencies. Label values
are bounded so a fleet of 100k devices stays scrapeable: no device id is ever a
label; profile names outside the catalog collapse to ``custom``; gRPC methods
and codes are finite sets.

Counters (registrations, heartbeats, RPCs) are per coordinator process; the
fleet and rollout gauges (devices by status/profile, rollouts by state) are read
from Redis by every replica, leader of the rollout controller or not, so every
replica reports the same fleet and dashboards aggregate them with ``max``, not
``sum``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from edgefleet.catalog import CATALOG
from edgefleet.coordinator.errors import AUTH_FAILURE_REASONS
from edgefleet.coordinator.state.model import FederatedRound
from edgefleet.version import __version__

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
            "1 when Redis answered the last health probe or fleet read (0: this replica's "
            "health is NOT_SERVING).",
            registry=r,
        )
        self.state_store_persistent = Gauge(
            "edgefleet_state_store_persistent",
            "1 when Redis persists the fleet (AOF or RDB), 0 when it keeps nothing across a "
            "restart (every device would re-enrol), -1 when it cannot be told (CONFIG refused).",
            registry=r,
        )
        self.state_store_persistent.set(-1)
        self.superlink_up = Gauge(
            "edgefleet_superlink_up",
            "1 while the SuperLink this coordinator supervises runs (-1: external, 0: down, "
            "NaN: no federation).",
            registry=r,
        )
        self.superlink_up.set(float("nan"))
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
        self.auth_failures = Counter(
            "edgefleet_auth_failures_total",
            "Refused authentications by reason (enroll_token, credential, revoked, "
            "admin_token, certificate); a burst is someone guessing secrets.",
            ["reason"],
            registry=r,
        )
        for reason in AUTH_FAILURE_REASONS:  # every series exists from the start, at 0
            self.auth_failures.labels(reason)
        self.telemetry_records = Counter(
            "edgefleet_telemetry_records_total",
            "Telemetry records received from agents: accepted (new) or duplicate (a resend).",
            ["outcome"],
            registry=r,
        )
        self.rollouts = Gauge(
            "edgefleet_rollouts",
            "Rollouts by state (running, paused, succeeded, rolled_back).",
            ["state"],
            registry=r,
        )
        self.rollout_devices = Gauge(
            "edgefleet_rollout_devices",
            "Devices in active (running or paused) rollouts, by model and rollout status "
            "(waiting, pending, active, failed).",
            ["model", "status"],
            registry=r,
        )
        self.rollout_rollbacks = Counter(
            "edgefleet_rollout_rollbacks_total",
            "Rollouts rolled back, by model and cause (activation, error_rate, latency, "
            "accuracy, timeout, operator).",
            ["model", "cause"],
            registry=r,
        )
        self.rollout_waves = Counter(
            "edgefleet_rollout_wave_advances_total",
            "Waves promoted after a healthy soak, by model.",
            ["model"],
            registry=r,
        )
        self.inference_latency = Histogram(
            "edgefleet_inference_latency_seconds",
            "Per-interval median inference latency reported by agents, by model variant "
            "(first 12 hex digits of its id) and device profile.",
            ["variant", "profile"],
            buckets=(
                0.0001,
                0.00025,
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
            ),
            registry=r,
        )
        self.inference_requests = Counter(
            "edgefleet_inference_requests_total",
            "Inferences served on devices (agent-reported deltas), by variant and profile.",
            ["variant", "profile"],
            registry=r,
        )
        self.inference_errors = Counter(
            "edgefleet_inference_errors_total",
            "Failed inferences on devices (agent-reported deltas), by variant and profile.",
            ["variant", "profile"],
            registry=r,
        )
        self.inference_accuracy = Gauge(
            "edgefleet_inference_accuracy_ratio",
            "Last accuracy on labelled local data reported by a device, by variant and profile.",
            ["variant", "profile"],
            registry=r,
        )
        # language models (InferenceService.Generate): what a user waits for and watches
        self.generation_ttft = Gauge(
            "edgefleet_generation_time_to_first_token_seconds",
            "Median time to first token a device last reported for Generate, by variant and "
            "profile.",
            ["variant", "profile"],
            registry=r,
        )
        self.generation_rate = Gauge(
            "edgefleet_generation_tokens_per_second",
            "Median decode rate (tokens/s after the first) a device last reported for Generate.",
            ["variant", "profile"],
            registry=r,
        )
        self.fl_round_loss = Gauge(
            "edgefleet_fl_round_loss",
            "Training loss of the latest federated round, by model.",
            ["model"],
            registry=r,
        )
        self.fl_round_accuracy = Gauge(
            "edgefleet_fl_round_accuracy_ratio",
            "Evaluation accuracy of the latest federated round, by model.",
            ["model"],
            registry=r,
        )
        self.fl_round_participants = Gauge(
            "edgefleet_fl_round_participants",
            "Devices that took part in the latest federated round, by model.",
            ["model"],
            registry=r,
        )
        self.fl_round_number = Gauge(
            "edgefleet_fl_round",
            "Number of the latest federated round, by model.",
            ["model"],
            registry=r,
        )
        self.fl_round_update_bytes = Gauge(
            "edgefleet_fl_round_update_bytes",
            "Bytes the devices' updates of the latest federated round weighed on the wire "
            "(after the run's update codec), by model.",
            ["model"],
            registry=r,
        )
        self._fl_outcomes: dict[str, int] = {"completed": 0, "failed": 0}
        r.register(_FederatedRoundsCollector(self))
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
        self.set_rollouts({}, {})
        self.state_store_up.set(0)

    def relay_device_metric(
        self,
        name: str,
        value: float,
        variant: str,
        profile: str,
        known: Callable[[str], bool] = lambda _: False,
    ) -> None:
        """Fold an agent-reported metric into the fleet series (bounded labels only).

        The variant is the device's own report, so it becomes a label (its first 12 hex
        digits) only if ``known`` says the coordinator has that variant; anything else is
        ``unknown``, or a device could add series with every heartbeat.
        """
        label = "none" if not variant else variant[:12] if known(variant) else "unknown"
        labels = (label, profile_label(profile))
        if name == "inference_latency_ms":
            self.inference_latency.labels(*labels).observe(value / 1000.0)
        elif name == "inference_count" and value > 0:
            self.inference_requests.labels(*labels).inc(value)
        elif name == "inference_errors" and value > 0:
            self.inference_errors.labels(*labels).inc(value)
        elif name == "inference_accuracy":
            self.inference_accuracy.labels(*labels).set(value)
        elif name == "generation_ttft_ms":
            self.generation_ttft.labels(*labels).set(value / 1000.0)
        elif name == "generation_tokens_per_s":
            self.generation_rate.labels(*labels).set(value)

    def set_federated(self, latest: list[FederatedRound], outcomes: dict[str, int]) -> None:
        """Replace the federated gauges from the store's snapshot."""
        for gauge in (
            self.fl_round_loss,
            self.fl_round_accuracy,
            self.fl_round_participants,
            self.fl_round_number,
            self.fl_round_update_bytes,
        ):
            gauge.clear()
        for r in latest:
            self.fl_round_loss.labels(r.model).set(r.loss)
            self.fl_round_accuracy.labels(r.model).set(r.accuracy)
            self.fl_round_participants.labels(r.model).set(r.participants)
            self.fl_round_number.labels(r.model).set(r.round)
            self.fl_round_update_bytes.labels(r.model).set(r.update_bytes)
        self._fl_outcomes = {"completed": 0, "failed": 0, **outcomes}

    def set_rollouts(self, states: dict[str, int], devices: dict[tuple[str, str], int]) -> None:
        """Replace the rollout gauges: ``{state: n}`` and ``{(model, status): n}``."""
        self.rollouts.clear()
        for state in ("running", "paused", "succeeded", "rolled_back"):
            self.rollouts.labels(state).set(states.get(state, 0))
        self.rollout_devices.clear()
        for (model, status), n in devices.items():
            self.rollout_devices.labels(model, status).set(n)

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


class _FederatedRoundsCollector(Collector):
    """``edgefleet_fl_rounds_total``: a counter whose value lives in Redis.

    Rounds are run by the ServerApp process, not this one, so the count is read
    from the store (by the fleet refresh) and exposed as a counter family here.
    """

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "edgefleet_fl_rounds", "Federated rounds finished, by outcome.", labels=["outcome"]
        )
        for outcome, n in sorted(self._metrics._fl_outcomes.items()):
            family.add_metric([outcome], n)
        yield family
