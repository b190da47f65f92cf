"""The coordinator's /metrics endpoint, scraped over HTTP from a real process."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from edgefleet.coordinator.metrics import CoordinatorMetrics, profile_label
from tests.conftest import ENROLL_TOKEN, AgentProc, CoordinatorProc, wait_for

FAST = ("--offline-after", "2", "--heartbeat-interval", "0.5")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_the_fleet(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
) -> None:
    coord = coordinator_factory(*FAST, "--metrics-refresh", "0.2")  # gauges read from Redis
    agent_factory(coord.address, "rpi4", "m-pi", "--token", ENROLL_TOKEN)
    agent_factory(coord.address, "cortex-m4", "m-mcu", "--token", ENROLL_TOKEN)
    bad = agent_factory(coord.address, "rpi4", "m-bad", "--token", "wrong")
    assert bad.proc is not None and bad.proc.wait(20) == 2

    def fleet_online() -> bool:
        s = scrape(coord.metrics_url)
        return value(s, "edgefleet_devices", status="online", profile="all") == 2

    wait_for(fleet_online, 15, "device gauges to show 2 online")
    s = scrape(coord.metrics_url)
    assert value(s, "edgefleet_devices", status="online", profile="rpi4") == 1
    assert value(s, "edgefleet_devices", status="online", profile="cortex-m4") == 1
    assert value(s, "edgefleet_device_registrations_total", outcome="created", profile="rpi4") == 1
    assert value(s, "edgefleet_device_registrations_total", outcome="rejected", profile="rpi4") == 1
    assert value(s, "edgefleet_heartbeats_total", outcome="ok") >= 2
    assert value(s, "edgefleet_state_store_up") == 1
    handled = value(
        s,
        "edgefleet_grpc_server_handled_total",
        service="edgefleet.v1.DeviceService",
        method="Register",
        code="UNAUTHENTICATED",
    )
    assert handled == 1
    count = value(
        s,
        "edgefleet_grpc_server_handling_seconds_count",
        service="edgefleet.v1.DeviceService",
        method="Heartbeat",
    )
    assert count >= 2
    # no series carries a device id (bounded cardinality)
    assert not any("dev-" in v for _, labels in s for _, v in labels)


def test_unknown_profile_names_collapse_to_custom() -> None:
    assert profile_label("rpi4") == "rpi4"
    assert profile_label("auto") == "auto"
    assert profile_label("my-weird-board-123") == "custom"
    m = CoordinatorMetrics()
    m.set_fleet({("online", "a1"): 2, ("online", "a2"): 3, ("offline", "rpi4"): 1})
    assert (
        m.registry.get_sample_value("edgefleet_devices", {"status": "online", "profile": "custom"})
        == 5
    )
    assert (
        m.registry.get_sample_value("edgefleet_devices", {"status": "online", "profile": "all"})
        == 5
    )
    # a profile that disappears from the fleet disappears from the gauges
    m.set_fleet({("online", "rpi4"): 1})
    assert (
        m.registry.get_sample_value("edgefleet_devices", {"status": "online", "profile": "custom"})
        is None
    )
