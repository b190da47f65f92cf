"""Monitoring checked for real: a real Prometheus scrapes a running coordinator, and
every dashboard panel query and every alert rule is run against it.

Skipped only when Debian's ``prometheus`` binary is absent (``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import yaml

from edgefleet.catalog import get_profile
from edgefleet.client.admin_client import AdminClient
from edgefleet.coordinator.state.model import FederatedRound
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.v1 import admin_pb2, device_pb2, device_pb2_grpc
from edgefleet.wire import profile_to_proto
from tests.conftest import ADMIN_TOKEN, CoordinatorProc, free_port, wait_for
from tests.fleetkit import ScriptedDevice, make_model
from tests.prereqs import require_binaries

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
import generate as dashboards  # noqa: E402

#: the alerts the live test provokes (a rollback, a failed round, a burst of bad tokens)
PROVOKED = (
    "EdgefleetRolloutRolledBack",
    "EdgefleetFederatedRoundFailed",
    "EdgefleetAuthFailureBurst",
)
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")


@pytest.fixture(autouse=True)
def _prometheus_installed() -> None:
    require_binaries("prometheus", "promtool")


def promql(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as reply:
        body = json.loads(reply.read())
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_shipped_prometheus_config_and_rules_are_valid() -> None:
    assert PROMTOOL is not None
    config = subprocess.run(
        [PROMTOOL, "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", str(ROOT / "deploy/prometheus/alerts.yml")],
        capture_output=True,
        text=True,
    )
    assert rules.returncode == 0 and "SUCCESS: 8 rules found" in rules.stdout, rules.stdout


def test_dashboards_are_generated_from_code_and_current() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "deploy/grafana/generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start Prometheus on a free port scraping the given metrics address every second."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(metrics_address: str) -> str:
        assert PROMETHEUS is not None
        config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["rule_files"] = [str(ROOT / "deploy/prometheus/alerts.yml")]
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [metrics_address]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=log,
            )
        )
        base = f"http://127.0.0.1:{port}"

        def target_up() -> bool:
            try:
                return any(float(r["value"][1]) == 1 for r in promql(base, "up"))
            except OSError:
                return False

        wait_for(target_up, 30, "Prometheus to scrape the coordinator")
        return base

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def test_every_dashboard_and_alert_query_against_a_live_prometheus(
    coordinator_factory: Callable[..., CoordinatorProc],
    prometheus: Callable[[str], str],
    redis_url: str,
    tmp_path: Path,
) -> None:
    data = tmp_path / "coord"
    make_model(data)
    make_model(data, name="digits-v2", tag="-v2")
    coord = coordinator_factory(
        "--offline-after",
        "30",
        "--heartbeat-interval",
        "0.5",
        "--rollout-interval",
        "0.2",
        "--redis-url",
        redis_url,
        data_dir=data,
    )
    metrics_address = coord.metrics_url.removeprefix("http://").removesuffix("/metrics")
    base = prometheus(metrics_address)  # scraping from the start, as in production
    devices = [ScriptedDevice.register(coord.address, f"pi-{i}", "rpi4") for i in range(3)]
    devices.append(ScriptedDevice.register(coord.address, "mcu", "cortex-m4"))

    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        gate = admin_pb2.RolloutGate(soak_seconds=0.2, wave_timeout_seconds=60, min_inferences=0)
        ok = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits", selector="all", strategy="canary", canary_fraction=0.25, gate=gate
            )
        )
        for _ in range(100):
            for d in devices:
                d.heartbeat()
                d.obey()
            if c.get_rollout(ok.id).state == "succeeded":
                break
            time.sleep(0.1)
        assert c.get_rollout(ok.id).state == "succeeded"
        bad = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits-v2", selector="device:" + devices[0].device_id, gate=gate
            )
        )
        time.sleep(2.5)  # let Prometheus see the rollback counter at 0 first
        devices[0].heartbeat()
        devices[0].failed, devices[0].failure_reason = devices[0].desired.variant_id, "bad sig"
        for _ in range(100):
            devices[0].heartbeat()
            if c.get_rollout(bad.id).state == "rolled_back":
                break
            time.sleep(0.1)
        assert c.get_rollout(bad.id).state == "rolled_back"
        # one rollout stays active (paused) so the per-rollout gauges have series
        held = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits-v2", selector="device:" + devices[1].device_id, gate=gate
            )
        )
        c.control_rollout(held.id, "pause")

    async def federated_rounds() -> None:
        store = FleetStore(aioredis.Redis.from_url(redis_url, decode_responses=True))
        for rnd, outcome in ((1, "completed"), (2, "completed"), (3, "failed")):
            await store.record_fl_round(
                FederatedRound(
                    "digits", "run-1", rnd, outcome, 0.5 / rnd, 0.9 + rnd / 100, 3, time.time()
                )
            )
        await store.close()

    asyncio.run(federated_rounds())

    stop = threading.Event()

    def report_inference() -> None:  # devices keep serving while Prometheus scrapes
        seq = 1000
        while not stop.is_set():
            for i, d in enumerate(devices):
                for name, value in (
                    ("inference_latency_ms", 2.0 + i),
                    ("inference_count", 50),
                    ("inference_errors", i % 2),
                    ("inference_accuracy", 0.97),
                ):
                    seq += 1
                    d.report_metric(name, value, seq)
                d.heartbeat()
            time.sleep(0.4)

    reporter = threading.Thread(target=report_inference, daemon=True)
    reporter.start()
    try:
        # a burst of wrong enrollment tokens: the auth-failure alert must see it
        with grpc.insecure_channel(coord.address) as ch:
            stub = device_pb2_grpc.DeviceServiceStub(ch)
            for _ in range(80):
                with contextlib.suppress(grpc.RpcError):
                    stub.Register(
                        device_pb2.RegisterRequest(
                            instance_key="guessing-instance",
                            name="guess",
                            profile=profile_to_proto(get_profile("rpi4")),
                        ),
                        metadata=(("authorization", "Bearer guess"),),
                        timeout=5,
                    )
        rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
        exprs = {rule["alert"]: rule["expr"] for rule in rules["groups"][0]["rules"]}

        def every_query_has_data() -> bool:
            """Several scrapes in, rate() and histogram_quantile() have data and the alerts
            we provoked fire (polled: sooner than a fixed sleep on an idle box)."""
            for _, _, expr in dashboards.all_queries():
                values = [r["value"][1] for r in promql(base, expr)]
                if not any(v not in ("NaN", "+Inf", "-Inf") for v in values):
                    return False
            return all(promql(base, exprs[name]) for name in PROVOKED)

        waited = time.monotonic()
        deadline = waited + 60  # generous: the asserts below say what is missing
        while not every_query_has_data() and time.monotonic() < deadline:
            time.sleep(0.5)
        waited = time.monotonic() - waited
        listing = []
        for uid, title, expr in dashboards.all_queries():
            series = promql(base, expr)
            values = [r["value"][1] for r in series]
            listing.append((uid, title, len(series)))
            assert series, f"{uid} / {title}: no data for {expr}"
            assert any(v not in ("NaN", "+Inf", "-Inf") for v in values), (title, values)
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as reply:
            exported = set(re.findall(r"^# TYPE (\w+) ", reply.read().decode(), re.MULTILINE))
        exported |= {f"{n}_total" for n in exported} | {"up"}
        exported |= {f"{n}_bucket" for n in exported} | {f"{n}_count" for n in exported}
        fired = {}
        for rule in rules["groups"][0]["rules"]:
            expr = rule["expr"]
            series = promql(base, expr)  # valid PromQL against real data
            names = set(re.findall(r"\b(edgefleet_[a-z_]+|up)\b", expr))
            assert names <= exported, (rule["alert"], names - exported)
            fired[rule["alert"]] = len(series)
            listing.append(("alert", rule["alert"], len(series)))
    finally:
        stop.set()
        reporter.join(10)
    # the conditions we created must show; the ones we did not must stay quiet
    assert all(fired[name] >= 1 for name in PROVOKED), fired
    assert fired["EdgefleetCoordinatorDown"] == 0 and fired["EdgefleetStateStoreDown"] == 0
    assert fired["EdgefleetDevicesOffline"] == 0
    print(f"\nevery query had data {waited:.1f}s after the last event")
    print("query listing (dashboard or alert, panel, series returned):")
    for row in listing:
        print("  ", *row)
