"""This device's membership in the fleet's federation: its own supervised Flower SuperNode.

Why the agent owns it: the coordinator only says *where* the SuperLink is (every heartbeat
reply carries it, level-triggered like the desired variant); the device decides whether it
can take part (it has local data, Flower is installed, the operator did not opt out) and keeps
a SuperNode running against that address -- started once, restarted if it dies, replaced when
the address changes, stopped with the agent.

The SuperNode's ``node_config`` names the device (id, profile, RAM, labels, its data shard), so
the ServerApp selects and reports by device, not by Flower's node ids; battery and health
change while it runs, so they go to a small status file the ClientApp reads at query time.

Microcontrollers cannot host a SuperNode (no Python, kilobytes of SRAM). Their agent -- the
process that already stands in for the simulated MCU -- hosts it for them, with the MCU's SRAM
as ``ram-bytes`` and ``proxy = "agent"``: the ClientApp then sizes training to the MCU's
budget (the ServerApp gives it the narrowest width slice that fits, or leaves it out).

A pidfile lets a restarted agent (killed -9) adopt the SuperNode it left running.

Next to the SuperNode runs the device's **training worker** (:mod:`.fl.train_worker`) when the
agent has torch (``edgefleet[agent-torch]``): Flower starts a fresh ClientApp process per
message, and the worker is where a conv net's round trains without paying torch's import and
the shard's features again. Supervised the same way (restarted on death, stopped with the
agent, adopted through its pidfile); it imports torch on its first round, so a device that
only ever trains the numpy MLP pays a small idle process, not torch's memory. Without torch
there is no worker and the ClientApp trains what it can in-process.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.fl.contract import Node
from edgefleet.fsutil import atomic_write
from edgefleet.profiles import DeviceProfile

if TYPE_CHECKING:
    from edgefleet.agent.fl.supernode import SuperNodeSupervisor
    from edgefleet.agent.fl.train_worker_client import TrainWorkerSupervisor
    from edgefleet.agent.workload import LocalDataSpec

__all__ = ["FederationMember", "FederationTarget"]

log = logging.getLogger("edgefleet.agent.federation")


@dataclass(frozen=True)
class FederationTarget:
    """Where the coordinator says the SuperLink is ("" = no federation)."""

    superlink_address: str = ""
    tls: bool = False


class FederationMember:
    """Keeps this device's SuperNode in line with the coordinator's :class:`FederationTarget`.

    Blocking (process start/stop); the session calls it through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        state_dir: Path,
        profile: DeviceProfile,
        local_data: LocalDataSpec | None,
        *,
        ca_cert: bytes | None,
        labels: Mapping[str, str] | None = None,
        enabled: bool = True,
    ) -> None:
        self.dir = state_dir / "fl"
        self.profile = profile
        self.local_data = local_data
        self.ca_cert = ca_cert
        self.labels = dict(labels or {})
        self.enabled = enabled
        self.target = FederationTarget()
        self.node: SuperNodeSupervisor | None = None
        self.worker: TrainWorkerSupervisor | None = None
        self.unavailable = ""  # why this device does not take part ("" = it can)
        self._device_id = ""

    @property
    def running(self) -> bool:
        return self.node is not None and self.node.running()

    @property
    def restarts(self) -> int:
        return self.node.restarts if self.node is not None else 0

    def reconcile(self, target: FederationTarget, device_id: str) -> str | None:
        """Start, replace or stop the SuperNode; returns an event message when it changed."""
        if target == self.target and device_id == self._device_id:
            return None
        was_running = self.node is not None
        self.stop()
        self.target, self._device_id = target, device_id
        if not target.superlink_address or not device_id:
            return "left the federation" if was_running else None
        if reason := self._why_not(target):
            if reason != self.unavailable:
                log.info("not joining the federation at %s: %s", target.superlink_address, reason)
            self.unavailable = reason
            return f"not joining the federation: {reason}"
        self.unavailable = ""
        self.node = self._start(target, device_id)
        how = "adopted" if self.node.adopted else "started"
        return f"SuperNode {how} for {target.superlink_address}" + (
            " (acting for the microcontroller)" if self.profile.is_mcu else ""
        )

    def _why_not(self, target: FederationTarget) -> str:
        if not self.enabled:
            return "disabled on this agent (--no-federation)"
        if self.local_data is None:
            return "no local data (--local-data)"
        if target.tls and self.ca_cert is None:
            return "the SuperLink uses TLS but this agent has no CA certificate"
        from edgefleet.fl.process import flower_bin

        try:
            flower_bin("flower-supernode")
        except FileNotFoundError:
            return "Flower is not installed (pip install 'edgefleet[federated]')"
        return ""

    def _start(self, target: FederationTarget, device_id: str) -> SuperNodeSupervisor:
        from edgefleet.agent.fl.supernode import SuperNodeSupervisor, node_config_for
        from edgefleet.fl.process import FlowerTls

        self.dir.mkdir(parents=True, exist_ok=True)
        shard = self._materialise_shard()
        self.worker = self._start_worker(shard)
        tls = None
        if target.tls and self.ca_cert is not None:
            ca = self.dir / "ca.pem"
            ca.write_bytes(self.ca_cert)
            tls = FlowerTls(ca=ca)
        config = node_config_for(
            device_id,
            self.profile.name,
            self.profile.ram_bytes,
            str(shard),
            labels=self.labels,
            status_path=str(self.dir / "status.json"),
            runtime=self.profile.runtimes[0] if self.profile.runtimes else "torch",
            proxy="agent" if self.profile.is_mcu else "",
            partition_id=self.local_data.partition if self.local_data is not None else None,
            train_worker=str(self.worker.socket_path) if self.worker is not None else "",
            lm_base_dir=str(self.dir / "lm-bases"),  # LoRA bases received once, by message
        )
        node = SuperNodeSupervisor(
            target.superlink_address, config, self.dir, port=self._port(), tls=tls,
            pidfile=self.dir / "supernode.pid",
        )  # fmt: skip
        node.start()
        return node

    def _start_worker(self, shard: Path) -> TrainWorkerSupervisor | None:
        """The training worker for ``shard``, when this agent has torch (else None)."""
        from edgefleet.agent.fl.train_worker_client import (
            TrainWorkerSupervisor,
            socket_path_in,
            torch_installed,
        )

        if not torch_installed():
            return None
        socket_path = socket_path_in(self.dir)
        if socket_path is None:
            log.warning("no training worker: %s is too deep for a Unix socket", self.dir)
            return None
        worker = TrainWorkerSupervisor(
            socket_path, shard, self.dir, pidfile=self.dir / "train-worker.pid"
        )
        worker.start()
        return worker

    def _materialise_shard(self) -> Path:
        """The local data as the ``.npz`` the ClientApp loads (written once, then reused)."""
        from edgefleet.agent.workload import load_local_data
        from edgefleet.fl.partition import save_shard

        assert self.local_data is not None
        if _is_text_shard(self.local_data.source):  # a language model's text: read as is
            return Path(self.local_data.source)
        path = self.dir / "shard.npz"
        stamp = self.dir / "shard.spec"
        spec = json.dumps(self.local_data.__dict__, sort_keys=True)
        if not path.exists() or not stamp.exists() or stamp.read_text() != spec:
            save_shard(load_local_data(self.local_data), path)
            stamp.write_text(spec)
        return path

    def _port(self) -> int:
        """The SuperNode's own API port, kept across agent restarts (same command line, so a
        restarted agent can adopt the SuperNode it left running)."""
        path = self.dir / "supernode.port"
        if path.exists():
            try:
                return int(path.read_text())
            except ValueError:
                pass
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        path.write_text(str(port))
        return port

    def write_status(self, battery: float | None, health: str) -> None:
        """Live facts for the ClientApp's query (atomic: a reader never sees half a file)."""
        if self.node is None:
            return
        status: dict[str, object] = {Node.HEALTH: health}
        if battery is not None:
            status[Node.BATTERY] = round(battery, 1)
        atomic_write(self.dir / "status.json", json.dumps(status))

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop(timeout=5.0)
            self.node = None
        if self.worker is not None:
            self.worker.stop(timeout=5.0)
            self.worker = None


def _is_text_shard(source: str) -> bool:
    """Whether ``--local-data`` is a text shard (``edgefleet.datasets.text_shards``): a LoRA
    run's ClientApp reads it itself, so it is not rewritten as a classifier's shard."""
    if not source.endswith(".npz"):
        return False
    import numpy as np

    try:
        with np.load(source) as z:
            return "text_train" in z.files
    except (OSError, ValueError):
        return False
