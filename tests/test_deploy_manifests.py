"""The N-replica deploy manifests, checked offline (issue 18 item 9).

- ``deploy/k8s``: every object validates (``kubernetes_validate``, strict: an unknown field is an
  error) against the oldest and the newest Kubernetes the package knows here; references hold
  (Secrets, ConfigMap keys, selectors, named ports); and each replica gets what it needs: the
  fleet identity mounted read-only where ``EDGEFLEET_FLEET_DIR`` points, the same Redis, the
  same ``--offline-after``, its own data dir, readiness from gRPC health; workers the same Redis
  and fleet key. Every flag and ``EDGEFLEET_*`` variable given to ``edgefleet coordinator
  start`` or ``edgefleet worker`` must be one that command (or the image's entrypoint and
  health check) reads: a typo would otherwise surface only in a cluster.
- ``docker-compose.replicas.yml``: the same facts from the YAML itself, and ``docker-compose
  config`` accepts it (that part needs docker-compose: skipped locally without it, a failure
  under CI, where scripts/install_prereqs.sh installs it).
- ``deploy/compose/haproxy.cfg``: TCP only (TLS passes through), both ports balanced over the
  scaled service, and its health expression matches a real coordinator's /metrics exactly when
  the replica is SERVING; ``haproxy -c`` when HAProxy is installed (else the structure only).

The checkers return lists of problems, and the tests feed them broken copies too, so each check
is shown able to fail.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import typer.main
import yaml  # type: ignore[import-untyped]
from prometheus_client import generate_latest

from edgefleet.cli.app import app
from edgefleet.client.admin_client import AdminClient
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.fleet_dir import init_fleet
from edgefleet.v1 import admin_pb2
from tests.conftest import (
    ADMIN_TOKEN,
    ENROLL_TOKEN,
    AgentProc,
    CoordinatorProc,
    free_port,
    wait_for,
)
from tests.prereqs import missing_prerequisite, require_binaries
from tests.redis_procs import RedisProc

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
COMPOSE = REPO / "docker-compose.replicas.yml"
HAPROXY = REPO / "deploy" / "compose" / "haproxy.cfg"
NAMESPACE = "edgefleet"
# Secrets the operator creates (deploy/README.md says how) and the keys the manifests read.
SECRETS = {
    "edgefleet-fleet": set(),
    "edgefleet-tokens": {"admin", "enroll"},
    "edgefleet-redis": {"url"},
}
# Read by the image rather than the CLI: the entrypoint (publishing the CA), the health check
# (the CA to verify with), the token loader, and the CLI client inside the container.
IMAGE_ENV = {
    "EDGEFLEET_CA_EXPORT",
    "EDGEFLEET_CA_CERT",
    "EDGEFLEET_ADMIN_TOKEN",
    "EDGEFLEET_ENROLL_TOKEN",
    "EDGEFLEET_COORDINATOR",
}
Doc = dict[str, Any]


# --- helpers ------------------------------------------------------------------------------------


def k8s_docs() -> list[Doc]:
    docs: list[Doc] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d, d["spec"]["template"]


def container(workload: Doc) -> Doc:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def cli_command(*path: str) -> click.Command:
    cmd: click.Command = typer.main.get_command(app)
    for name in path:
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[name]
    return cmd


def unknown_cli_inputs(path: tuple[str, ...], args: list[str], env: set[str]) -> list[str]:
    """Flags in ``args`` and EDGEFLEET_* names in ``env`` the command does not read."""
    params = cli_command(*path).params
    flags = {o for p in params for o in p.opts}
    envvars = {str(p.envvar) for p in params if p.envvar} | IMAGE_ENV
    problems = [
        f"{' '.join(path)}: no option {a}" for a in args if a.startswith("--") and a not in flags
    ]
    problems += [
        f"{' '.join(path)}: nothing reads {e}"
        for e in sorted(env)
        if e.startswith("EDGEFLEET_") and e not in envvars
    ]
    return problems


def reference_problems(docs: list[Doc]) -> list[str]:
    """Dangling references: Secrets/ConfigMap keys, selectors, named ports, namespaces."""
    problems: list[str] = []
    configmaps = {
        d["metadata"]["name"]: set(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap"
    }
    templates = [t["metadata"]["labels"] for _, t in pod_specs(docs)]

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= labels.items() for labels in templates)

    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != NAMESPACE:
            problems.append(f"{name}: not in namespace {NAMESPACE}")
        if d["kind"] == "Service" and not selects(d["spec"]["selector"]):
            problems.append(f"{name}: its selector matches no pod template")
        if d["kind"] == "PodDisruptionBudget" and not selects(d["spec"]["selector"]["matchLabels"]):
            problems.append(f"{name}: its selector matches no pod template")
        if d["kind"] == "Service":
            for port in d["spec"]["ports"]:
                target = port.get("targetPort")
                named = {
                    p.get("name")
                    for _, t in pod_specs(docs)
                    if d["spec"]["selector"].items() <= t["metadata"]["labels"].items()
                    for c in t["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                if isinstance(target, str) and target not in named:
                    problems.append(f"{name}: targetPort {target} is no container port")
    for workload, template in pod_specs(docs):
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        if (
            workload["spec"]["selector"]["matchLabels"].items()
            > template["metadata"]["labels"].items()
        ):
            problems.append(f"{name}: its selector does not match its own pods")
        spec = template["spec"]
        for volume in spec.get("volumes", []):
            secret = volume.get("secret", {}).get("secretName")
            if secret is not None and secret not in SECRETS:
                problems.append(f"{name}: mounts unknown Secret {secret}")
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    s = ref["secretKeyRef"]
                    if s["key"] not in SECRETS.get(s["name"], set()):
                        problems.append(f"{name}: Secret {s['name']} has no key {s['key']}")
                if "configMapKeyRef" in ref:
                    m = ref["configMapKeyRef"]
                    if m["key"] not in configmaps.get(m["name"], set()):
                        problems.append(f"{name}: ConfigMap {m['name']} has no key {m['key']}")
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("tcpSocket", {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problems.append(f"{name}: {probe} names no port {port}")
    return problems


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.28.0", kubernetes_validate.latest_version()])
def test_every_kubernetes_object_validates_strictly(version: str) -> None:
    docs = k8s_docs()
    assert {d["kind"] for d in docs} >= {
        "Namespace", "ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget",
    }  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_wrong_type_and_an_unknown_field() -> None:
    deployment = find(k8s_docs(), "Deployment", "edgefleet-coordinator")
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, kubernetes_validate.latest_version(), strict=True)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_references_hold_and_the_checker_catches_dangling_ones() -> None:
    docs = k8s_docs()
    assert reference_problems(docs) == []
    broken = copy.deepcopy(docs)
    find(broken, "ConfigMap", "edgefleet-config")["data"].pop("offline-after")
    find(broken, "Service", "edgefleet-coordinator")["spec"]["selector"] = {"app": "nothing"}
    worker = find(broken, "Deployment", "edgefleet-worker")["spec"]["template"]["spec"]
    worker["volumes"][0]["secret"]["secretName"] = "edgefleet-fleet-typo"
    found = reference_problems(broken)
    assert any("has no key offline-after" in p for p in found), found
    assert any("Service/edgefleet-coordinator: its selector" in p for p in found), found
    assert any("unknown Secret edgefleet-fleet-typo" in p for p in found), found


def test_every_secret_is_documented_with_the_command_that_creates_it() -> None:
    guide = (REPO / "deploy" / "README.md").read_text()
    for name in SECRETS:
        assert f"create secret generic {name}" in guide, name


def test_each_replica_gets_the_fleet_identity_the_same_redis_and_liveness_settings() -> None:
    docs = k8s_docs()
    deployment = find(docs, "Deployment", "edgefleet-coordinator")
    assert deployment["spec"]["replicas"] >= 2
    c = container(deployment)
    env = env_of(c)
    spec = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    # the fleet identity: a Secret, read-only, where EDGEFLEET_FLEET_DIR points
    fleet = mounts[env["EDGEFLEET_FLEET_DIR"]["value"]]
    assert fleet.get("readOnly") is True
    assert volumes[fleet["name"]]["secret"]["secretName"] == "edgefleet-fleet"
    assert env["EDGEFLEET_CA_CERT"]["value"] == env["EDGEFLEET_FLEET_DIR"]["value"] + "/ca.pem"
    # its own data dir: never a shared volume
    data = mounts["/var/lib/edgefleet/data"]
    assert "emptyDir" in volumes[data["name"]]
    # the same Redis and liveness settings for every replica, from one Secret / ConfigMap
    assert env["EDGEFLEET_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "edgefleet-redis"
    args = c["args"]
    assert args[args.index("--offline-after") + 1] == "$(OFFLINE_AFTER)"
    assert args[args.index("--heartbeat-interval") + 1] == "$(HEARTBEAT_INTERVAL)"
    assert env["OFFLINE_AFTER"]["valueFrom"]["configMapKeyRef"]["key"] == "offline-after"
    assert "configMapKeyRef" in env["EDGEFLEET_ADVERTISE_DEVICE"]["valueFrom"]
    # readiness and startup are gRPC health over TLS; liveness does not follow Redis
    for probe in ("readinessProbe", "startupProbe"):
        assert c[probe]["exec"]["command"][0] == "edgefleet-healthcheck", probe
    assert "exec" not in c["livenessProbe"]
    assert (
        "/usr/local/bin/edgefleet-healthcheck"
        in (REPO / "deploy" / "docker" / "coordinator.Dockerfile").read_text()
    )
    # one disruption at a time, and the Service carries both gRPC ports as plain TCP
    pdb = find(docs, "PodDisruptionBudget", "edgefleet-coordinator")
    assert pdb["spec"]["maxUnavailable"] == 1 < deployment["spec"]["replicas"]
    service = find(docs, "Service", "edgefleet-coordinator")
    assert {(p["port"], p["protocol"]) for p in service["spec"]["ports"]} == {
        (50051, "TCP"), (50052, "TCP"),
    }  # fmt: skip
    # workers: the same Redis (queue and shared variant store) and the fleet's signing key
    worker = find(docs, "Deployment", "edgefleet-worker")
    w = container(worker)
    assert w["command"] == ["edgefleet", "worker"]
    assert env_of(w)["EDGEFLEET_REDIS_URL"]["valueFrom"] == env["EDGEFLEET_REDIS_URL"]["valueFrom"]
    assert env_of(w)["EDGEFLEET_FLEET_DIR"] == env["EDGEFLEET_FLEET_DIR"]


def test_every_flag_and_variable_given_to_the_cli_is_one_it_reads() -> None:
    docs = k8s_docs()
    coordinator = container(find(docs, "Deployment", "edgefleet-coordinator"))
    worker = container(find(docs, "Deployment", "edgefleet-worker"))
    assert (
        unknown_cli_inputs(("coordinator", "start"), coordinator["args"], set(env_of(coordinator)))
        == []
    )
    assert unknown_cli_inputs(("worker",), worker["command"][2:], set(env_of(worker))) == []
    # and the check can fail
    assert unknown_cli_inputs(
        ("coordinator", "start"), ["--ofline-after"], {"EDGEFLEET_REDIS"}
    ) == [
        "coordinator start: no option --ofline-after",
        "coordinator start: nothing reads EDGEFLEET_REDIS",
    ]


# --- docker-compose -----------------------------------------------------------------------------


def compose_problems(compose: Doc) -> list[str]:
    problems: list[str] = []
    services = compose["services"]
    coordinator, worker, lb = services["coordinator"], services["worker"], services["lb"]
    if int(coordinator.get("scale", 1)) < 2:
        problems.append("coordinator: fewer than 2 replicas")
    if "container_name" in coordinator or "hostname" in coordinator:
        problems.append("coordinator: a fixed name cannot scale")
    env = coordinator["environment"]
    for key in ("EDGEFLEET_REDIS_URL", "EDGEFLEET_FLEET_DIR"):
        if worker["environment"].get(key) != env.get(key):
            problems.append(f"worker: {key} differs from the replicas'")
    fleet_mounts = [
        v for v in coordinator["volumes"] if v.split(":")[1] == env["EDGEFLEET_FLEET_DIR"]
    ]
    if not fleet_mounts or not fleet_mounts[0].endswith(":ro"):
        problems.append("coordinator: the fleet identity is not mounted read-only")
    if any(v.split(":")[1] == "/var/lib/edgefleet/data" for v in coordinator["volumes"]):
        problems.append("coordinator: a named data-dir volume would be shared by replicas")
    if (
        coordinator["depends_on"].get("fleet-init", {}).get("condition")
        != "service_completed_successfully"
    ):
        problems.append("coordinator: does not wait for the fleet identity")
    command = coordinator["command"]
    for flag in ("--offline-after", "--heartbeat-interval", "--advertise-device"):
        if flag not in command:
            problems.append(f"coordinator: no {flag}")
    if (
        "--advertise-device" in command
        and command[command.index("--advertise-device") + 1] != "lb:50052"
    ):
        problems.append("coordinator: agents are not sent through the balancer")
    if worker.get("entrypoint") != ["edgefleet", "worker"]:
        problems.append("worker: not `edgefleet worker`")
    # "127.0.0.1:HOST:CONTAINER" as written, with "/tcp" appended by `docker-compose config`
    if sorted(p.removesuffix("/tcp").rsplit(":", 1)[1] for p in lb["ports"]) != [
        "50051", "50052", "8404",
    ]:  # fmt: skip
        problems.append("lb: does not publish both gRPC ports and its stats")
    if any(not p.startswith("127.0.0.1:") for p in lb["ports"]):
        problems.append("lb: publishes beyond loopback")
    for name, svc in services.items():
        if name.startswith("agent-"):
            agent_env = svc["environment"]
            if agent_env.get("EDGEFLEET_COORDINATOR") != "lb:50051":
                problems.append(f"{name}: does not dial the balancer")
            if "EDGEFLEET_CA_CERT" not in agent_env:
                problems.append(f"{name}: no CA to verify the replicas")
        if "EDGEFLEET_INSECURE" in str(svc):
            problems.append(f"{name}: plaintext")
    return problems


def test_compose_replicas_structure_and_the_checker_catches_mistakes() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    assert compose_problems(compose) == []
    coordinator = compose["services"]["coordinator"]
    assert (
        unknown_cli_inputs(
            ("coordinator", "start"), coordinator["command"], set(coordinator["environment"])
        )
        == []
    )
    worker = compose["services"]["worker"]
    assert unknown_cli_inputs(("worker",), [], set(worker["environment"])) == []
    broken = copy.deepcopy(compose)
    broken["services"]["coordinator"]["scale"] = 1
    broken["services"]["coordinator"]["volumes"].append("data:/var/lib/edgefleet/data")
    broken["services"]["worker"]["environment"]["EDGEFLEET_REDIS_URL"] = "redis://other:6379/0"
    agent = broken["services"]["agent-rpi4"]  # its environment is shared by YAML merge: copy it
    agent["environment"] = {**agent["environment"], "EDGEFLEET_COORDINATOR": "coordinator:50051"}
    assert compose_problems(broken) == [
        "coordinator: fewer than 2 replicas",
        "worker: EDGEFLEET_REDIS_URL differs from the replicas'",
        "coordinator: a named data-dir volume would be shared by replicas",
        "agent-rpi4: does not dial the balancer",
    ]


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if shutil.which("docker-compose") is None:
        missing_prerequisite("docker-compose not installed: structure checks only")
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_config_accepts_the_replicas_stack_and_demands_tokens() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    done = compose_config({**base, "EDGEFLEET_ADMIN_TOKEN": "a", "EDGEFLEET_ENROLL_TOKEN": "e"})
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert compose_problems(resolved) == []
    assert resolved["services"]["coordinator"]["scale"] == 3
    refused = compose_config(base)
    assert refused.returncode != 0
    assert (
        "set EDGEFLEET_ADMIN_TOKEN" in refused.stderr
        or "set EDGEFLEET_ENROLL_TOKEN" in refused.stderr
    )


# --- HAProxy ------------------------------------------------------------------------------------


def haproxy_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in text.splitlines():
        line = (
            raw.split("#", 1)[0].rstrip()
            if not raw.lstrip().startswith("http-check")
            else raw.rstrip()
        )
        if not line.strip():
            continue
        if not line.startswith((" ", "\t")):
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line.strip())
    return sections


def health_regex(lines: list[str]) -> re.Pattern[str]:
    (expect,) = [ln for ln in lines if ln.startswith("http-check expect rstring ")]
    quoted = expect.split(" ", 3)[3]
    assert quoted.startswith('"') and quoted.endswith('"')
    return re.compile(quoted[1:-1].replace("\\n", "\n"))


def test_haproxy_passes_tls_through_and_checks_each_replica_s_serving_state() -> None:
    sections = haproxy_sections(HAPROXY.read_text())
    assert "mode tcp" in sections["defaults"]
    for port, backend in (
        ("50051", "backend replicas_grpc"),
        ("50052", "backend replicas_devices"),
    ):
        frontend = [name for name, lines in sections.items() if f"bind :{port}" in lines]
        assert len(frontend) == 1, port
        assert not any("ssl" in ln for ln in sections[frontend[0]])  # no TLS termination
        lines = sections[backend]
        assert f"server-template coordinator 1-16 coordinator:{port}" in lines
        (defaults,) = [ln for ln in lines if ln.startswith("default-server")]
        assert "check port 9464" in defaults and "on-marked-down shutdown-sessions" in defaults
        healthy = health_regex(lines)
        metrics = CoordinatorMetrics()
        metrics.state_store_up.set(1)
        assert healthy.search(generate_latest(metrics.registry).decode())
        metrics.state_store_up.set(0)  # NOT_SERVING: out of rotation (the HELP line must not match)
        assert not healthy.search(generate_latest(metrics.registry).decode())


def test_haproxy_accepts_its_config() -> None:
    require_binaries("haproxy")
    done = subprocess.run(
        ["haproxy", "-c", "-f", str(HAPROXY)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- HAProxy, live ------------------------------------------------------------------------------


def render_haproxy(ports: dict[str, int], replica: CoordinatorProc, metrics_port: int) -> str:
    """The shipped config on loopback ports, with one real replica in place of compose DNS,
    checks every 0.5 s instead of 2 s (same expression, same fall/rise counts), and fewer
    connections than a container's open-file limit allows."""
    text = HAPROXY.read_text()
    for old, new in (
        ("bind :50051", f"bind 127.0.0.1:{ports['grpc']}"),
        ("bind :50052", f"bind 127.0.0.1:{ports['device']}"),
        ("bind :8404", f"bind 127.0.0.1:{ports['stats']}"),
        ("server-template coordinator 1-16 coordinator:50051", f"server r0 {replica.address}"),
        (
            "server-template coordinator 1-16 coordinator:50052",
            f"server r0 127.0.0.1:{ports['replica_device']}",
        ),
        ("check port 9464 inter 2s", f"check port {metrics_port} inter 500ms"),
        (" resolvers docker init-addr none", ""),
        ("maxconn 20000", "maxconn 1000"),  # 2 fds each: within this shell's open-file limit
    ):
        assert old in text, old
        text = text.replace(old, new)
    return text


def heartbeats_ok(coord: CoordinatorProc) -> float:
    with urllib.request.urlopen(coord.metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(r'^edgefleet_heartbeats_total\{outcome="ok"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def backend_status(stats_port: int) -> dict[str, str]:
    """Each backend's r0 status (UP, DOWN, ...) from HAProxy's CSV stats."""
    url = f"http://127.0.0.1:{stats_port}/;csv"
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            rows = list(csv.reader(reply.read().decode().lstrip("# ").splitlines()))
    except OSError:
        return {}
    head = rows[0]
    name, server, status = head.index("pxname"), head.index("svname"), head.index("status")
    return {
        r[name]: r[status].split()[0] for r in rows[1:] if len(r) > status and r[server] == "r0"
    }


@pytest.mark.slow  # ~10-18 s (a TLS replica, an agent, two health flips): over the test budget
def test_a_real_agent_enrols_and_heartbeats_through_haproxy_which_follows_replica_health(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    tmp_path: Path,
) -> None:
    """TLS passes through: the replica behind HAProxy sees the device's own certificate (the
    device port refuses anything else), so an agent that knows only the balancer's addresses
    enrols and goes online. A replica whose Redis stops answering leaves the rotation, and
    comes back with it."""
    require_binaries("haproxy")
    redis_server = RedisProc(tmp_path / "redis").start()
    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    ports = {k: free_port() for k in ("grpc", "device", "stats", "replica_device")}
    data = tmp_path / "replica"
    (data / "tls").mkdir(parents=True)
    shutil.copy(fleet / "ca.pem", data / "tls" / "ca.pem")  # the fixture's health check
    haproxy: subprocess.Popen[bytes] | None = None
    try:
        replica = coordinator_factory(
            *("--tls", "--redis-url", redis_server.url, "--fleet-dir", str(fleet)),
            *("--heartbeat-interval", "0.5", "--offline-after", "3"),
            *("--device-port", str(ports["replica_device"])),
            *("--advertise-device", f"localhost:{ports['device']}"),
            data_dir=data,
        )
        metrics_port = int(replica.metrics_url.rsplit(":", 1)[1].split("/")[0])
        config = tmp_path / "haproxy.cfg"
        config.write_text(render_haproxy(ports, replica, metrics_port))
        with (tmp_path / "haproxy.log").open("wb") as log:
            haproxy = subprocess.Popen(
                ["haproxy", "-W", "-db", "-f", str(config)], stdout=log, stderr=log
            )
        wanted = {"replicas_grpc": "UP", "replicas_devices": "UP"}
        wait_for(lambda: backend_status(ports["stats"]) == wanted, 15, "the replica UP in HAProxy")

        lb = f"127.0.0.1:{ports['grpc']}"
        agent = agent_factory(
            lb, "rpi4", "via-lb", "--token", ENROLL_TOKEN, "--ca-cert", str(fleet / "ca.pem")
        )
        ca = (fleet / "ca.pem").read_bytes()
        with AdminClient(lb, ADMIN_TOKEN, ca_cert=ca) as admin:  # the admin API through it too

            def online() -> bool:
                devices = admin.list_devices()
                return any(d.status == admin_pb2.DEVICE_STATUS_ONLINE for d in devices)

            wait_for(online, 30, f"the agent online through HAProxy; log:\n{agent.log}")

        def endpoints() -> list[str]:
            try:
                identity = json.loads((agent.state_dir / "identity.json").read_text())
            except (OSError, ValueError):
                return []
            return list(identity.get("device_endpoints", []))

        # told the balancer's device port, and heartbeating there: mutual TLS through HAProxy
        wait_for(lambda: endpoints() == [f"localhost:{ports['device']}"], 15, "the endpoint")
        wait_for(lambda: heartbeats_ok(replica) >= 2, 15, f"heartbeats; log:\n{agent.log}")

        redis_server.signal(signal.SIGSTOP)  # the replica goes NOT_SERVING
        try:
            down = {"replicas_grpc": "DOWN", "replicas_devices": "DOWN"}
            wait_for(lambda: backend_status(ports["stats"]) == down, 15, "the replica DOWN")
        finally:
            redis_server.signal(signal.SIGCONT)
        wait_for(lambda: backend_status(ports["stats"]) == wanted, 15, "the replica UP again")
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(10)
        redis_server.kill()
