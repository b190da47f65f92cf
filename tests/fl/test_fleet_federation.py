"""Federated rounds on the fleet itself: the coordinator's SuperLink, the agents' SuperNodes.

Everything is real and started the way an operator starts it: a TLS coordinator with
``--superlink local`` (a supervised ``flower-superlink`` serving a certificate from the
coordinator's CA), three agents enrolled with the enrollment token and verifying with the CA,
each of which starts its own ``flower-supernode`` when a heartbeat reply names the SuperLink
(one of them acts for a Cortex-M4 microcontroller), and ``edgefleet train start`` with no
target, which asks the coordinator's data dir where the SuperLink is.

Then the failure paths: the coordinator is killed -9 in the middle of a run and restarted --
it adopts the SuperLink it left running and the run finishes; an agent killed -9 and restarted
adopts its SuperNode; a graceful agent stop takes its SuperNode with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from edgefleet.devtools.fl_local import pretrain_biased
from tests.conftest import ENROLL_TOKEN, AgentProc, CoordinatorProc, _env, free_port, wait_for

pytestmark = pytest.mark.timeout(420)

PROFILES = ("rpi4", "cortex-m4", "phone-budget")


def _pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _supernode_pid(agent: AgentProc) -> int | None:
    return _pid(agent.state_dir / "fl" / "supernode.pid")


def _train(coord: CoordinatorProc, runs: Path, init: Path, rounds: int, name: str) -> Popen:
    """``train start`` as the README writes it: run dir and data dir relative to the working
    directory (Flower 1.42 refuses relative paths in its config; we must hand it absolute ones)."""
    cwd = Path(os.path.commonpath([runs, coord.data_dir]))
    return subprocess.Popen(
        [
            sys.executable, "-m", "edgefleet.cli.main", "train", "start", "mlp",
            "--rounds", str(rounds), "--strategy", "heterofl", "--min-devices", "3",
            "--init", str(init), "--local-epochs", "2",
            "--runs-dir", os.path.relpath(runs, cwd),
            "--data-dir", os.path.relpath(coord.data_dir, cwd), "--name", name, "--json",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=cwd,
    )  # fmt: skip


Popen = subprocess.Popen[bytes]


def _progress(runs: Path, name: str) -> dict[str, object]:
    path = runs / name / "progress.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_agents_run_their_own_supernodes_and_rounds_survive_a_coordinator_kill(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    tmp_path: Path,
) -> None:
    coord = coordinator_factory(
        "--tls", "--superlink", "local", "--superlink-port", str(free_port()),
        "--heartbeat-interval", "1", "--metrics-refresh", "0.2",
    )  # fmt: skip
    ca = coord.data_dir / "tls" / "ca.pem"
    info_file = coord.data_dir / "coordinator.json"  # written once the SuperLink listens
    wait_for(info_file.exists, 60, "coordinator info file")
    info = json.loads(info_file.read_text())
    assert info["superlink"], info
    superlink_pid = _pid(coord.data_dir / "superlink" / "superlink.pid")
    assert _alive(superlink_pid)
    log = (coord.data_dir / "superlink" / "superlink.log").read_text()
    assert "https://" in log  # TLS, with the coordinator's certificate

    def superlink_up() -> bool:
        text = urllib.request.urlopen(coord.metrics_url, timeout=5).read().decode()
        return "edgefleet_superlink_up 1.0" in text

    wait_for(superlink_up, 20, "edgefleet_superlink_up 1 on /metrics")

    agents = []
    for i, profile in enumerate(PROFILES):
        extra = ["--token", ENROLL_TOKEN, "--ca-cert", str(ca), "--local-data", "digits"]
        extra += ["--partition", f"{i}/3"]
        agents.append(agent_factory(coord.address, profile, f"dev-{i}", *extra))
    wait_for(lambda: all(_alive(_supernode_pid(a)) for a in agents), 60, "agents' SuperNodes")
    configs = [(a.state_dir / "fl" / "node-config.toml").read_text() for a in agents]
    assert '"proxy" = "agent"' in configs[1] and '"runtime" = "mcu-sim"' in configs[1]
    assert '"proxy"' not in configs[0]
    device_ids = [
        json.loads((a.state_dir / "identity.json").read_text())["device_id"] for a in agents
    ]
    assert all(f'"device-id" = "{d}"' in c for d, c in zip(device_ids, configs, strict=True))

    init = pretrain_biased("mlp", tmp_path / "init.npz")
    runs = tmp_path / "runs"

    # One run on the fleet: every device takes part, the MCU through its agent at width 0.5;
    # the coordinator is killed -9 after round 1 and restarted: it adopts the SuperLink it left
    # running (its own process group) and the run carries on to the end.
    proc = _train(coord, runs, init, 3, "fleet")
    wait_for(lambda: len(_progress(runs, "fleet").get("rounds", [])) >= 1, 180, "round 1")  # type: ignore[arg-type]
    assert coord.stop(signal.SIGKILL) == -signal.SIGKILL
    assert _alive(superlink_pid)  # not taken down with the coordinator
    info_file.unlink()  # rewritten once the restarted coordinator has its SuperLink again
    coord.start()
    wait_for(info_file.exists, 60, "the restarted coordinator's SuperLink")
    assert _pid(coord.data_dir / "superlink" / "superlink.pid") == superlink_pid
    assert "superlink adopted from a previous supervisor" in coord.log.read_text()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, (out + err).decode()[-2000:]
    doc = _progress(runs, "fleet")
    assert doc["state"] == "succeeded"
    rounds = doc["rounds"]
    assert isinstance(rounds, list) and len(rounds) == 3
    assert all(sorted(r["participants"]) == sorted(device_ids) for r in rounds)
    devices = doc["devices"]
    assert isinstance(devices, dict)
    by_device = {d["device"]: d for d in devices.values()}
    assert by_device[device_ids[1]]["proxy"] == "agent"
    assert by_device[device_ids[1]]["width"] == 0.5  # the Cortex-M4's SRAM budget
    assert by_device[device_ids[0]]["width"] == 1.0
    final = doc["final"]
    assert isinstance(final, dict)
    first_eval = rounds[0]["client_eval_acc"]  # the base model on the devices' held-out data
    assert final["client_eval_acc"] > first_eval, (first_eval, final)

    # every round went into the fleet's state exactly once -- those that ended while the
    # coordinator (and its embedded Redis) was down waited -- and comes out as metrics
    def rounds_exported() -> bool:
        text = urllib.request.urlopen(coord.metrics_url, timeout=5).read().decode()
        return (
            'edgefleet_fl_round{model="mlp"} 3.0' in text
            and 'edgefleet_fl_round_participants{model="mlp"} 3.0' in text
            and 'edgefleet_fl_rounds_total{outcome="completed"} 3.0' in text
        )

    wait_for(rounds_exported, 30, "edgefleet_fl_round{model=mlp} 3 on /metrics")

    # an agent killed -9 and restarted adopts its SuperNode; a clean stop ends it
    node_pid = _supernode_pid(agents[0])
    agents[0].stop(signal.SIGKILL)
    assert _alive(node_pid)
    agents[0].start()
    wait_for(
        lambda: "adopted from a previous supervisor" in agents[0].log.read_text(),
        60,
        "agent adopting its node",
    )
    assert _supernode_pid(agents[0]) == node_pid
    assert agents[0].stop() == 0
    wait_for(lambda: not _alive(node_pid), 20, "SuperNode stopped with its agent")
    # and the coordinator's clean stop takes its SuperLink with it
    assert coord.stop() == 0
    wait_for(lambda: not _alive(superlink_pid), 20, "SuperLink stopped with the coordinator")
