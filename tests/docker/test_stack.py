"""The compose stack, for real: built images, ``docker-compose up`` with the offline override,
containerized agents online at the containerized coordinator, cgroup limits as their profiles
say, and Prometheus scraping the coordinator.

TLS is on, and proven so: the CLI on the host verifies the coordinator with the CA the
coordinator published, every online agent holds a certificate for its own device id signed by
that CA (so its heartbeats passed the mutual-TLS device port, which refuses anything else), the
agents read the CA from a read-only volume that holds no key, and plaintext gRPC to either port
fails. The same is checked on the bridge network of docker-compose.yml + its override (what a
user with a registry runs), where the coordinator is reached by its service name.

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

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.catalog import get_profile
from edgefleet.devtools.docker_fleet import ContainerLimits, container_limits
from edgefleet.pki import device_id_of
from tests.conftest import free_port
from tests.docker.conftest import REPO, TIMINGS
from tests.prereqs import require_binaries

pytestmark = pytest.mark.docker

ADMIN_TOKEN = "stack-test-admin-token"
ENROLL_TOKEN = "stack-test-enroll-token"
PROM_JOB = "edgefleet-coordinator"
# Online devices summed over profiles (the coordinator also exports a profile="all" total).
FLEET_QUERY = 'sum(edgefleet_devices{status="online",profile!="all"})'
ONLINE_TIMEOUT = 120.0
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.offline.yml")
# docker-compose.yml on its bridge network, ports published by the override; local images.
BRIDGE_FILES = (
    "docker-compose.yml",
    "docker-compose.override.yml",
    "tests/docker/compose.local-images.yml",
)
INSECURE_FILE = "docker-compose.insecure.yml"
# Where the coordinator publishes its CA certificate, and where the agents read it.
CA_EXPORT = "/var/lib/edgefleet/ca/ca.pem"
AGENT_CA = "/etc/edgefleet/ca/ca.pem"
AGENT_STATE = "/var/lib/edgefleet/agent"
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
    device_port: int
    metrics_port: int
    prometheus_port: int
    files: tuple[str, ...] = COMPOSE_FILES
    ca_pem: bytes = b""  # the CA the coordinator published, once the stack is up

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*compose_cmd(self.project, *self.files), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if check and done.returncode != 0:  # say why, not only the exit status
            raise AssertionError(
                f"docker-compose {' '.join(args)} exited {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )
        return done

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

    def fetch_ca(self, path: Path) -> None:
        """Copy the CA certificate out of the coordinator, for the CLI on the host (TLS)."""
        self.ca_pem = self.compose("exec", "-T", "coordinator", "cat", CA_EXPORT).stdout.encode()
        assert self.ca_pem.startswith(b"-----BEGIN CERTIFICATE-----"), self.ca_pem[:80]
        path.write_bytes(self.ca_pem)
        self.env["EDGEFLEET_CA_CERT"] = str(path)


def stack_env(**ports: int) -> dict[str, str]:
    """The stack's ports and tokens; no EDGEFLEET_INSECURE: the stack and its CLI use TLS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "COMPOSE_"))}
    env.update(
        EDGEFLEET_ADMIN_TOKEN=ADMIN_TOKEN,
        EDGEFLEET_ENROLL_TOKEN=ENROLL_TOKEN,
        **{f"EDGEFLEET_{k.upper()}_PORT": str(v) for k, v in ports.items()},
    )
    env["EDGEFLEET_COORDINATOR"] = f"127.0.0.1:{ports['grpc']}"
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


def health(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """The gRPC health status of ``address``, or the error code's name (plaintext if no creds)."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        except grpc.RpcError as err:
            return str(err.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


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


def compose_config(*files: str) -> str:
    env = stack_env(grpc=50051, device=50052, metrics=9464, prometheus=9090, redis=6379)
    r = subprocess.run(
        [*compose_cmd(None, *files), "config"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize(
    "files",
    [
        (),
        ("docker-compose.yml",),
        COMPOSE_FILES,
        BRIDGE_FILES,
        ("docker-compose.yml", "docker-compose.override.yml", INSECURE_FILE),
        (*COMPOSE_FILES, INSECURE_FILE),
    ],
    ids=["default(+override)", "plain", "offline", "bridge-local", "insecure", "offline-insecure"],
)
def test_compose_config_is_valid_and_tls_unless_opted_out(files: tuple[str, ...]) -> None:
    """TLS is the default of every setup; plaintext only with the explicit insecure override,
    which then covers the coordinator and every agent."""
    require_binaries("docker-compose")
    config = compose_config(*files)
    agents = len(compose_agent_services(REPO / "docker-compose.yml"))
    if INSECURE_FILE in files:
        assert config.count("EDGEFLEET_INSECURE: '1'") == 1 + agents, config
    else:
        assert "EDGEFLEET_INSECURE" not in config
        assert config.count(f"EDGEFLEET_CA_CERT: {AGENT_CA}") == agents, config


# --- the live stack ----------------------------------------------------------------------------


def run_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    files: tuple[str, ...],
    label: str,
    services: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """``up`` the stack (only ``services`` and their dependencies, if given), yield it with its
    CA fetched, print the logs if the test failed, and always ``down -v``."""
    require_binaries("docker-compose")
    ports = {k: free_port() for k in ("grpc", "device", "metrics", "prometheus", "redis")}
    s = Stack(
        project=f"eftest{os.getpid()}{label}",
        env=stack_env(**ports),
        grpc_port=ports["grpc"],
        device_port=ports["device"],
        metrics_port=ports["metrics"],
        prometheus_port=ports["prometheus"],
        files=files,
    )
    started = time.monotonic()
    try:
        try:
            s.compose("up", "-d", "--no-build", *services)
        except AssertionError as exc:  # an unhealthy service: its logs say why
            logs = s.compose("logs", "--no-color", "--tail", "60", check=False).stdout
            raise AssertionError(f"{exc}\n--- compose logs ---\n{logs[-6000:]}") from None
        # The agents wait for a healthy coordinator, so by now its CA exists and is published.
        s.fetch_ca(tmp_path / "stack-ca.pem")
        yield s
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            logs = s.compose("logs", "--no-color", "--tail", "40", check=False).stdout
            print(f"--- compose logs ({s.project}) ---\n{logs}", file=sys.stderr)
    finally:
        s.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
        TIMINGS[f"compose {label} stack test (up, checks, down -v)"] = time.monotonic() - started


@pytest.fixture
def stack(
    edgefleet_images: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Stack]:
    yield from run_stack(request, tmp_path, COMPOSE_FILES, "offline")


@pytest.fixture
def bridge_stack(
    edgefleet_images: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Stack]:
    probe = f"eftest{os.getpid()}probe"
    r = subprocess.run(
        ["docker", "network", "create", "--driver", "bridge", probe],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"this engine cannot create bridge networks: {r.stderr.strip()}")
    subprocess.run(["docker", "network", "rm", probe], capture_output=True, check=False)
    # The coordinator (and Redis) with two agents: enough to prove name-based TLS end to end.
    agents = ("agent-rpi-zero2w", "agent-phone-budget")
    yield from run_stack(request, tmp_path, BRIDGE_FILES, "bridge", agents)


def wait_for_agents(
    stack: Stack, timeout: float, profiles: int = MIN_AGENT_PROFILES
) -> list[dict[str, Any]]:
    """Poll ``edgefleet devices ls`` on the host (over TLS) until agents of ``profiles``
    distinct profiles are online."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        r = stack.edgefleet("devices", "ls", "--json")
        if r.returncode == 0:
            devices: list[dict[str, Any]] = json.loads(r.stdout)
            online = [d for d in devices if d["status"] == "online"]
            if len({d["profile"] for d in online}) >= profiles:
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


def assert_tls_everywhere(
    stack: Stack,
    online: list[dict[str, Any]],
    containers: list[dict[str, Any]],
    device_endpoint: str,
) -> None:
    """The coordinator and the agents talk TLS (mutual TLS for devices), nothing else works."""
    ca = x509.load_pem_x509_certificate(stack.ca_pem)
    by_profile = {
        c["Config"]["Labels"]["edgefleet.profile"]: c
        for c in containers
        if "edgefleet.profile" in c["Config"]["Labels"]
    }
    for device in online:
        info = by_profile[device["profile"]]
        cid = info["Id"]
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        assert "EDGEFLEET_INSECURE" not in env, device["name"]
        assert env["EDGEFLEET_CA_CERT"] == AGENT_CA
        # The CA comes read-only from the shared volume, which holds the certificate only.
        mount = next(m for m in info["Mounts"] if m["Destination"] == os.path.dirname(AGENT_CA))
        assert mount["RW"] is False, mount
        assert (read_in_container(cid, AGENT_CA) or "").encode() == stack.ca_pem.strip()
        listing = subprocess.run(
            ["docker", "exec", cid, "ls", "-A", os.path.dirname(AGENT_CA)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert listing == ["ca.pem"], listing
        # Its own certificate, for its own id, signed by the coordinator's CA: the device port
        # accepts heartbeats only with it, so "online" means they went over mutual TLS.
        cert_pem = (read_in_container(cid, f"{AGENT_STATE}/device.pem") or "").encode()
        assert device_id_of(cert_pem) == device["id"], device["name"]
        x509.load_pem_x509_certificate(cert_pem).verify_directly_issued_by(ca)
        identity = json.loads(read_in_container(cid, f"{AGENT_STATE}/identity.json") or "{}")
        assert identity["device_id"] == device["id"]
        assert identity["device_endpoint"] == device_endpoint
        logs = subprocess.run(
            ["docker", "logs", cid], capture_output=True, text=True, check=False
        ).stderr
        assert "INSECURE" not in logs, logs[-2000:]

    main = f"127.0.0.1:{stack.grpc_port}"
    devices = f"127.0.0.1:{stack.device_port}"
    tls = grpc.ssl_channel_credentials(stack.ca_pem)
    # The server certificate is valid for 127.0.0.1 (the published / host-network address).
    assert health(main, tls) == "SERVING"
    # Plaintext gets nowhere, on either port; the device port also wants a client certificate.
    assert health(main, None) == "UNAVAILABLE"
    assert health(devices, None) == "UNAVAILABLE"
    assert health(devices, tls) == "UNAVAILABLE"
    # And an operator cannot fall back to plaintext by accident.
    refused = stack.edgefleet("--insecure", "fleet", "summary")
    assert refused.returncode != 0
    coordinator_logs = stack.compose("logs", "--no-color", "coordinator").stdout
    assert "(TLS)" in coordinator_logs and "INSECURE" not in coordinator_logs, coordinator_logs


def test_stack_comes_up_with_profile_sized_agents_and_prometheus(stack: Stack) -> None:
    online = wait_for_agents(stack, ONLINE_TIMEOUT)
    assert all(d["name"].startswith("compose-") for d in online)

    containers = [docker_inspect(i) for i in stack.compose("ps", "-q").stdout.split()]
    by_service = {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in containers}
    # Healthy = gRPC health over TLS, verified against the CA (deploy/docker/grpc-healthcheck.py).
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
    assert_tls_everywhere(stack, online, agents, f"127.0.0.1:{stack.device_port}")

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


def test_bridge_stack_reaches_the_coordinator_by_name_over_tls(bridge_stack: Stack) -> None:
    """docker-compose.yml's own network: agents verify the coordinator as "coordinator", are
    sent to coordinator:50052 for mutual TLS, and the host CLI reaches the published port."""
    online = wait_for_agents(bridge_stack, ONLINE_TIMEOUT, profiles=2)
    containers = [docker_inspect(i) for i in bridge_stack.compose("ps", "-q").stdout.split()]
    by_service = {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in containers}
    assert by_service["coordinator"]["State"]["Health"]["Status"] == "healthy"
    assert by_service["coordinator"]["HostConfig"]["NetworkMode"] != "host"
    assert_tls_everywhere(bridge_stack, online, containers, "coordinator:50052")
    # The CLI inside the stack works too: it trusts the CA in the coordinator's data dir.
    inside = bridge_stack.compose(
        "exec", "-T", "coordinator", "edgefleet", "fleet", "summary", "--json"
    )
    assert json.loads(inside.stdout)["online"] >= 2
