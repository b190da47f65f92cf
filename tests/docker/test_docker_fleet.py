"""``DockerFleet``: agent containers sized by profile against a real coordinator, and cleanup.

The profile -> limits mapping is checked without an engine; the fleet itself against a TLS
coordinator process on the host (host networking: the containers reach 127.0.0.1 directly).
Each container gets the coordinator's CA, and is online only if its heartbeats passed the
mutual-TLS device port with its own certificate; plaintext needs an explicit ``insecure=True``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgefleet.catalog import CATALOG, get_profile
from edgefleet.client.admin_client import AdminClient
from edgefleet.devtools.docker_fleet import (
    AGENT_MEMORY_FLOOR,
    CONTAINER_CA_PATH,
    CPU_CAP,
    CPU_FLOOR,
    LABEL_FLEET,
    LABEL_MANAGED,
    MANAGED_BY,
    MEMORY_CAP,
    ContainerLimits,
    DockerFleet,
    DockerFleetError,
    container_limits,
    remove_stale,
)
from edgefleet.pki import CertificateAuthority, device_id_of
from edgefleet.profiles import GIB, MIB, DeviceClass
from edgefleet.v1 import admin_pb2
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, CoordinatorProc, cli_env

FLEET_PROFILES = ("rpi-zero2w", "cortex-m7", "esp32-s3")
AGENT_STATE = "/var/lib/edgefleet/agent"


# --- the mapping (no engine needed) ------------------------------------------------------------


def test_limits_mirror_device_classes() -> None:
    assert container_limits(get_profile("rpi4")) == ContainerLimits(4 * GIB, 750_000_000, 128)
    assert container_limits(get_profile("rpi-zero2w")) == ContainerLimits(
        512 * MIB, 500_000_000, 128
    )
    assert container_limits(get_profile("phone-flagship")).memory_bytes == MEMORY_CAP
    for p in CATALOG.values():
        limits = container_limits(p)
        assert AGENT_MEMORY_FLOOR <= limits.memory_bytes <= MEMORY_CAP
        assert CPU_FLOOR <= limits.cpus <= CPU_CAP
        if p.device_class is DeviceClass.MCU:  # simulated by a Python agent: floors apply
            assert limits.memory_bytes == AGENT_MEMORY_FLOOR
            assert limits.cpus < 0.5
        else:
            assert limits.memory_bytes == min(p.ram_bytes, MEMORY_CAP)


def test_limits_order_follows_hardware() -> None:
    """A bigger device never gets less than a smaller one."""
    order = ["cortex-m4", "rpi-zero2w", "rpi3", "rpi4", "rpi5"]
    cpus = [container_limits(get_profile(n)).nano_cpus for n in order]
    assert cpus == sorted(cpus)


def test_host_cpus_caps_the_cpu_limit() -> None:
    assert container_limits(get_profile("phone-flagship"), host_cpus=1).cpus == 1.0


def test_docker_fleet_wants_a_ca_or_an_explicit_insecure(tmp_path: Path) -> None:
    """No plaintext by default: checked before the engine is even asked."""
    ca = CertificateAuthority.load_or_create(tmp_path).cert_pem
    common = {"coordinator": "127.0.0.1:1", "enroll_token": "x", "profiles": ["rpi4"], "count": 1}
    with pytest.raises(ValueError, match="CA certificate"):
        DockerFleet.start(**common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        DockerFleet.start(**common, ca_cert=ca, insecure=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a PEM certificate"):
        DockerFleet.start(**common, ca_cert=b"junk")  # type: ignore[arg-type]


# --- a live fleet ------------------------------------------------------------------------------


@pytest.fixture
def coordinator(
    docker_engine: None, coordinator_factory: Callable[..., CoordinatorProc]
) -> CoordinatorProc:
    """A TLS coordinator (main port + mutual-TLS device port PORT+1), CA in DATA_DIR/tls."""
    return coordinator_factory("--tls", "--metrics-port", "-1", "--offline-after", "10")


def ca_of(coordinator: CoordinatorProc) -> bytes:
    return (coordinator.data_dir / "tls" / "ca.pem").read_bytes()


@pytest.fixture
def some_ca(tmp_path: Path) -> bytes:
    return CertificateAuthority.load_or_create(tmp_path / "some-ca").cert_pem


@pytest.fixture
def agent_image(edgefleet_images: dict[str, str]) -> str:
    return edgefleet_images["agent"]


@pytest.fixture
def docker_client(docker_engine: None) -> Iterator[object]:
    docker = pytest.importorskip("docker", reason="the docker backend needs: pip install docker")
    client = docker.from_env()
    yield client
    client.close()


def wait_online(address: str, names: set[str], timeout: float, ca: bytes) -> list[admin_pb2.Device]:
    deadline = time.monotonic() + timeout
    with AdminClient(address, ADMIN_TOKEN, ca_cert=ca) as client:
        while True:
            devices = [d for d in client.list_devices() if d.name in names]
            online = {d.name for d in devices if d.status == admin_pb2.DEVICE_STATUS_ONLINE}
            if online >= names:
                return devices
            assert time.monotonic() < deadline, f"online {sorted(online)} of {sorted(names)}"
            time.sleep(0.5)


@pytest.mark.docker
def test_docker_fleet_starts_sized_agents_and_removes_them(
    coordinator: CoordinatorProc, agent_image: str, docker_client: object
) -> None:
    ca = ca_of(coordinator)
    fleet = DockerFleet.start(
        coordinator=coordinator.address,
        enroll_token=ENROLL_TOKEN,
        profiles=FLEET_PROFILES,
        count=4,
        image=agent_image,
        name_prefix="dockersim",
        ca_cert=ca,
    )
    try:
        names = {a.name for a in fleet}
        assert names == {
            "dockersim-rpi-zero2w-000",
            "dockersim-cortex-m7-001",
            "dockersim-esp32-s3-002",
            "dockersim-rpi-zero2w-003",
        }
        devices = wait_online(coordinator.address, names, 90, ca)
        assert {d.name: d.profile.name for d in devices} == {a.name: a.profile for a in fleet}
        ids = {d.name: d.id for d in devices}
        ncpu = int(fleet.client.info()["NCPU"])
        for agent in fleet:
            host = fleet.client.api.inspect_container(str(agent.container.id))["HostConfig"]
            want = container_limits(get_profile(agent.profile), host_cpus=ncpu)
            assert agent.limits == want
            assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (
                want.memory_bytes,
                want.nano_cpus,
                want.pids,
            )
            assert host["MemorySwap"] == want.memory_bytes
            assert host["NetworkMode"] == "host"
            # TLS: the CA in the container, the agent's own certificate for its own id.
            env = agent.container.attrs["Config"]["Env"]
            assert not any(e.startswith("EDGEFLEET_INSECURE=") for e in env)
            code, out = agent.container.exec_run(["cat", CONTAINER_CA_PATH])
            assert (code, out) == (0, ca)
            code, out = agent.container.exec_run(["cat", f"{AGENT_STATE}/device.pem"])
            assert code == 0 and isinstance(out, bytes), out
            assert device_id_of(out) == ids[agent.name], agent.name
        assert fleet.exited() == []
        fleet_id = fleet.fleet_id
    finally:
        report = fleet.stop(timeout=15)
    assert report.clean == 4, report
    assert (report.failed, report.killed) == ([], [])
    left = fleet.client.containers.list(all=True, filters={"label": f"{LABEL_FLEET}={fleet_id}"})
    assert left == []
    # The agents said goodbye, so the coordinator shows them offline at once.
    with AdminClient(coordinator.address, ADMIN_TOKEN, ca_cert=ca) as client:
        statuses = {d.name: d.status for d in client.list_devices() if d.name in names}
    assert set(statuses.values()) == {admin_pb2.DEVICE_STATUS_OFFLINE}


@pytest.mark.docker
def test_docker_fleet_refuses_unknown_image_and_profile(
    docker_engine: None, some_ca: bytes
) -> None:
    pytest.importorskip("docker")
    with pytest.raises(DockerFleetError, match="not found"):
        DockerFleet.start(
            coordinator="127.0.0.1:1",
            enroll_token="x",
            profiles=["rpi4"],
            count=1,
            image="edgefleet-agent:does-not-exist",
            ca_cert=some_ca,
        )
    with pytest.raises(KeyError, match="unknown profile"):
        DockerFleet.start(
            coordinator="127.0.0.1:1",
            enroll_token="x",
            profiles=["nope"],
            count=1,
            ca_cert=some_ca,
        )


@pytest.mark.docker
def test_remove_stale_cleans_up_by_label(
    agent_image: str, docker_client: object, some_ca: bytes
) -> None:
    """A crashed run leaves labelled containers; remove_stale finds them by label."""
    fleet = DockerFleet.start(
        coordinator="127.0.0.1:1",  # nothing listens: the agent just retries
        enroll_token="x",
        profiles=["cortex-m4"],
        count=2,
        image=agent_image,
        ca_cert=some_ca,
    )
    labels = [f"{LABEL_MANAGED}={MANAGED_BY}", f"{LABEL_FLEET}={fleet.fleet_id}"]
    assert len(fleet.client.containers.list(all=True, filters={"label": labels})) == 2
    assert remove_stale(fleet.client, fleet.fleet_id) == 2
    assert fleet.client.containers.list(all=True, filters={"label": labels}) == []


@pytest.mark.docker
def test_simulate_cli_docker_backend_uses_tls(
    coordinator: CoordinatorProc, agent_image: str, docker_client: object
) -> None:
    """``edgefleet simulate --backend docker`` without --insecure: the CLI hands the CA
    (--ca-cert) to the containers, waits for them online and stops them cleanly."""
    env = {k: v for k, v in cli_env(coordinator.address).items() if k != "EDGEFLEET_INSECURE"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli.main",
            "--ca-cert",
            str(coordinator.data_dir / "tls" / "ca.pem"),
            "simulate",
            "--backend",
            "docker",
            "--image",
            agent_image,
            "--devices",
            "2",
            "--profiles",
            "rpi-zero2w",
            "--token",
            ENROLL_TOKEN,
            "--timeout",
            "90",
            "--duration",
            "0.5",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert sorted(d["name"] for d in listed) == ["sim-rpi-zero2w-000", "sim-rpi-zero2w-001"]
    assert {d["status"] for d in listed} == {"online"}
    assert "stopped 2 agents: 2 clean" in r.stderr, r.stderr
