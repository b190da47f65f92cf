"""The compose stack, for real: built images, ``docker-compose up`` with the offline override,
containerized agents online at the containerized coordinator, cgroup limits as their profiles
say, and Prometheus scraping the coordinator.

Every port is a free loopback port and the compose project name is unique, so the test can run
next to other stacks (and other tests) on the same host.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator.docker_fleet import ContainerLimits, container_limits
from edgefleet.catalog import get_profile
from tests.conftest import free_port
from tests.docker.conftest import REPO, TIMINGS

pytestmark = pytest.mark.docker

ADMIN_TOKEN = "stack-test-admin-token"
ENROLL_TOKEN = "stack-test-enroll-token"
PROM_JOB = "edgefleet-coordinator"
# Online devices summed over profiles (the coordinator also exports a profile="all" total).
FLEET_QUERY = 'sum(edgefleet_devices{status="online",profile!="all"})'
ONLINE_TIMEOUT = 120.0
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.offline.yml")
# Agent services of docker-compose.yml: they must cover several device classes.
MIN_AGENT_PROFILES = 3


def compose_cmd(project: str | None, *files: str) -> list[str]:
    cmd = ["docker-compose"]
    if project:
        cmd += ["-p", project]
    for f in files:
        cmd += ["-f", str(REPO / f)]
    return cmd


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    grpc_port: int
    metrics_port: int
    prometheus_port: int

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose_cmd(self.project, *COMPOSE_FILES), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=check,
            timeout=600,
        )

    def edgefleet(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The operator CLI on the host, against the containerized coordinator."""
        cli = shutil.which("edgefleet", path=str(Path(sys.executable).parent)) or "edgefleet"
        return subprocess.run(
            [cli, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def prometheus(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.prometheus_port}{path}{query}"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return json.load(reply)


def stack_env(**ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "COMPOSE_"))}
    env.update(
        EDGEFLEET_ADMIN_TOKEN=ADMIN_TOKEN,
        EDGEFLEET_ENROLL_TOKEN=ENROLL_TOKEN,
        **{f"EDGEFLEET_{k.upper()}_PORT": str(v) for k, v in ports.items()},
    )
    env["EDGEFLEET_COORDINATOR"] = f"127.0.0.1:{ports['grpc']}"
    env["EDGEFLEET_INSECURE"] = "1"  # the compose stack runs plaintext (explicitly) for now
    return env


def docker_inspect(container_id: str) -> dict[str, Any]:
    out = subprocess.run(
        ["docker", "inspect", container_id], capture_output=True, text=True, check=True
    ).stdout
    data: list[dict[str, Any]] = json.loads(out)
    return data[0]


def read_in_container(container_id: str, *paths: str) -> str | None:
    """The first of ``paths`` that exists inside the container, read with cat."""
    for path in paths:
        r = subprocess.run(
            ["docker", "exec", container_id, "cat", path],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode == 0:
            return r.stdout.strip()
    return None


def kernel_limits(container_id: str) -> ContainerLimits:
    """The limits as the kernel enforces them, read from the container's own cgroup files."""
    mem = read_in_container(
        container_id, "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    cpu_v2 = read_in_container(container_id, "/sys/fs/cgroup/cpu.max")
    if cpu_v2 is not None:
        quota, period = (int(x) for x in cpu_v2.split())
    else:
        quota = int(read_in_container(container_id, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us") or -1)
        period = int(read_in_container(container_id, "/sys/fs/cgroup/cpu/cpu.cfs_period_us") or 1)
    pids = read_in_container(
        container_id, "/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"
    )
    assert mem is not None and pids is not None, "cgroup files not readable in the container"
    return ContainerLimits(
        memory_bytes=int(mem), nano_cpus=round(quota / period * 1e9), pids=int(pids)
    )


def inspected_limits(info: dict[str, Any]) -> ContainerLimits:
    host = info["HostConfig"]
    assert host["MemorySwap"] == host["Memory"], "agents get no swap, like the devices"
    return ContainerLimits(
        memory_bytes=int(host["Memory"]),
        nano_cpus=int(host["NanoCpus"]),
        pids=int(host["PidsLimit"]),
    )


# --- without an engine -----------------------------------------------------------------------


def compose_agent_services(path: Path) -> dict[str, dict[str, str]]:
    """The scalar settings of each agent service (by its edgefleet.profile label) in ``path``.

    A deliberately small reader for our own file's layout (two-space indents), so the check
    needs no YAML library in the base dev install.
    """
    services: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in path.read_text().splitlines():
        if re.fullmatch(r"  [\w.-]+:", line):
            current = services.setdefault(line.strip().rstrip(":"), {})
        elif re.match(r"\S", line):
            current = None
        elif current is not None and (m := re.fullmatch(r"\s+([\w.-]+): *([^\s#]+)", line)):
            current[m.group(1)] = m.group(2).strip("\"'")
    return {n: s for n, s in services.items() if "edgefleet.profile" in s}


def test_compose_agent_limits_follow_the_profile_mapping() -> None:
    """docker-compose.yml is static YAML; keep it equal to container_limits(profile)."""
    agents = compose_agent_services(REPO / "docker-compose.yml")
    assert len({s["edgefleet.profile"] for s in agents.values()}) >= MIN_AGENT_PROFILES + 1
    units = {"g": 1024**3, "m": 1024**2, "k": 1024}
    for name, svc in agents.items():
        want = container_limits(get_profile(svc["edgefleet.profile"]))
        mem = svc["mem_limit"]
        got = ContainerLimits(
            memory_bytes=int(mem[:-1]) * units[mem[-1]],
            nano_cpus=round(float(svc["cpus"]) * 1e9),
            pids=int(svc["pids_limit"]),
        )
        assert got == want, name
        assert svc["memswap_limit"] == svc["mem_limit"], name


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize(
    "files",
    [(), ("docker-compose.yml",), COMPOSE_FILES],
    ids=["default(+override)", "plain", "offline"],
)
def test_compose_config_is_valid(files: tuple[str, ...]) -> None:
    env = stack_env(grpc=50051, metrics=9464, prometheus=9090, redis=6379)
    r = subprocess.run(
        [*compose_cmd(None, *files), "config", "-q"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr


# --- the live stack ----------------------------------------------------------------------------


@pytest.fixture
def stack(edgefleet_images: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Stack]:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed: scripts/ci_docker_prereqs.sh")
    ports = {k: free_port() for k in ("grpc", "metrics", "prometheus", "redis")}
    s = Stack(
        project=f"eftest{os.getpid()}",
        env=stack_env(**ports),
        grpc_port=ports["grpc"],
        metrics_port=ports["metrics"],
        prometheus_port=ports["prometheus"],
    )
    started = time.monotonic()
    try:
        s.compose("up", "-d", "--no-build")
        yield s
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            logs = s.compose("logs", "--no-color", "--tail", "40", check=False).stdout
            print(f"--- compose logs ({s.project}) ---\n{logs}", file=sys.stderr)
    finally:
        s.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
        TIMINGS["compose stack test (up, checks, down -v)"] = time.monotonic() - started


def wait_for_agents(stack: Stack, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = stack.edgefleet("devices", "ls", "--json")
        if r.returncode == 0:
            devices: list[dict[str, Any]] = json.loads(r.stdout)
            online = [d for d in devices if d["status"] == "online"]
            if len({d["profile"] for d in online}) >= MIN_AGENT_PROFILES:
                return online
            last = f"online: {[(d['name'], d['profile']) for d in online]}"
        else:
            last = r.stderr.strip()
        time.sleep(1)
    raise AssertionError(f"agents not online after {timeout:.0f}s ({last})")


def wait_for_target(stack: Stack, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            targets = stack.prometheus("/api/v1/targets")["data"]["activeTargets"]
        except OSError:
            targets = []
        for t in targets:
            if t["labels"].get("job") == PROM_JOB and t["health"] == "up":
                return t
        time.sleep(1)
    raise AssertionError(f"Prometheus target {PROM_JOB} not up: {targets}")


def test_stack_comes_up_with_profile_sized_agents_and_prometheus(stack: Stack) -> None:
    online = wait_for_agents(stack, ONLINE_TIMEOUT)
    assert all(d["name"].startswith("compose-") for d in online)

    containers = [docker_inspect(i) for i in stack.compose("ps", "-q").stdout.split()]
    by_service = {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in containers}
    assert by_service["coordinator"]["State"]["Health"]["Status"] == "healthy"
    assert by_service["coordinator"]["Config"]["User"] == "10001:10001"
    agents = [c for c in containers if "edgefleet.profile" in c["Config"]["Labels"]]
    assert len({a["Config"]["Labels"]["edgefleet.profile"] for a in agents}) >= MIN_AGENT_PROFILES
    for info in agents:
        profile = get_profile(info["Config"]["Labels"]["edgefleet.profile"])
        want = container_limits(profile)
        assert info["HostConfig"]["NetworkMode"] == "host"
        assert inspected_limits(info) == want, profile.name
        assert kernel_limits(info["Id"]) == want, profile.name
        assert info["Config"]["User"] == "10001:10001", "agents run unprivileged"
    online_profiles = {d["profile"] for d in online}
    assert online_profiles <= {a["Config"]["Labels"]["edgefleet.profile"] for a in agents}

    target = wait_for_target(stack, 60)
    assert target["scrapeUrl"] == f"http://127.0.0.1:{stack.metrics_port}/metrics"
    up = stack.prometheus("/api/v1/query", query=f'up{{job="{PROM_JOB}"}}')["data"]["result"]
    assert [r["value"][1] for r in up] == ["1"]
    deadline = time.monotonic() + 30
    while True:  # the first scrape may predate the agents' registration
        fleet = stack.prometheus("/api/v1/query", query=FLEET_QUERY)["data"]["result"]
        if fleet and float(fleet[0]["value"][1]) >= MIN_AGENT_PROFILES:
            break
        assert time.monotonic() < deadline, f"{FLEET_QUERY} has no data: {fleet}"
        time.sleep(1)
