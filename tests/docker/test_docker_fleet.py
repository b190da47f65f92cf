"""``DockerFleet``: agent containers sized by profile against a real coordinator, and cleanup.

The profile -> limits mapping is checked without an engine; the fleet itself against a
coordinator process on the host (host networking: the containers reach 127.0.0.1 directly).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from coordinator.admin_client import AdminClient
from coordinator.docker_fleet import (
    AGENT_MEMORY_FLOOR,
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
from edgefleet.catalog import CATALOG, get_profile
from edgefleet.profiles import GIB, MIB, DeviceClass
from edgefleet.v1 import admin_pb2
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, CoordinatorProc

FLEET_PROFILES = ("rpi-zero2w", "cortex-m7", "esp32-s3")


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


# --- a live fleet ------------------------------------------------------------------------------


@pytest.fixture
def coordinator(
    docker_engine: None, coordinator_factory: Callable[..., CoordinatorProc]
) -> CoordinatorProc:
    return coordinator_factory("--metrics-port", "-1", "--offline-after", "10")


@pytest.fixture
def agent_image(edgefleet_images: dict[str, str]) -> str:
    return edgefleet_images["agent"]


@pytest.fixture
def docker_client(docker_engine: None) -> Iterator[object]:
    docker = pytest.importorskip("docker", reason="the docker backend needs: pip install docker")
    client = docker.from_env()
    yield client
    client.close()


def wait_online(address: str, names: set[str], timeout: float) -> list[admin_pb2.Device]:
    deadline = time.monotonic() + timeout
    with AdminClient(address, ADMIN_TOKEN) as client:
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
    fleet = DockerFleet.start(
        coordinator=coordinator.address,
        enroll_token=ENROLL_TOKEN,
        profiles=FLEET_PROFILES,
        count=4,
        image=agent_image,
        name_prefix="dockersim",
    )
    try:
        names = {a.name for a in fleet}
        assert names == {
            "dockersim-rpi-zero2w-000",
            "dockersim-cortex-m7-001",
            "dockersim-esp32-s3-002",
            "dockersim-rpi-zero2w-003",
        }
        devices = wait_online(coordinator.address, names, 90)
        assert {d.name: d.profile.name for d in devices} == {a.name: a.profile for a in fleet}
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
        assert fleet.exited() == []
        fleet_id = fleet.fleet_id
    finally:
        report = fleet.stop(timeout=15)
    assert report.clean == 4, report
    assert (report.failed, report.killed) == ([], [])
    left = fleet.client.containers.list(all=True, filters={"label": f"{LABEL_FLEET}={fleet_id}"})
    assert left == []
    # The agents said goodbye, so the coordinator shows them offline at once.
    with AdminClient(coordinator.address, ADMIN_TOKEN) as client:
        statuses = {d.name: d.status for d in client.list_devices() if d.name in names}
    assert set(statuses.values()) == {admin_pb2.DEVICE_STATUS_OFFLINE}


@pytest.mark.docker
def test_docker_fleet_refuses_unknown_image_and_profile(docker_engine: None) -> None:
    pytest.importorskip("docker")
    with pytest.raises(DockerFleetError, match="not found"):
        DockerFleet.start(
            coordinator="127.0.0.1:1",
            enroll_token="x",
            profiles=["rpi4"],
            count=1,
            image="edgefleet-agent:does-not-exist",
        )
    with pytest.raises(KeyError, match="unknown profile"):
        DockerFleet.start(coordinator="127.0.0.1:1", enroll_token="x", profiles=["nope"], count=1)


@pytest.mark.docker
def test_remove_stale_cleans_up_by_label(agent_image: str, docker_client: object) -> None:
    """A crashed run leaves labelled containers; remove_stale finds them by label."""
    fleet = DockerFleet.start(
        coordinator="127.0.0.1:1",  # nothing listens: the agent just retries
        enroll_token="x",
        profiles=["cortex-m4"],
        count=2,
        image=agent_image,
    )
    labels = [f"{LABEL_MANAGED}={MANAGED_BY}", f"{LABEL_FLEET}={fleet.fleet_id}"]
    assert len(fleet.client.containers.list(all=True, filters={"label": labels})) == 2
    assert remove_stale(fleet.client, fleet.fleet_id) == 2
    assert fleet.client.containers.list(all=True, filters={"label": labels}) == []
