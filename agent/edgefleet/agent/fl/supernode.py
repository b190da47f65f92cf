"""Run this device's Flower SuperNode under supervision.

The agent owns the SuperNode's life: it starts ``flower-supernode`` with a ``node_config``
naming the device (id, profile, resources, local data shard), restarts it if it dies and
stops it -- with its SuperExec and any running ClientApp -- when the agent shuts down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edgefleet.fl.process import FlowerTls, SupervisedProcess, flower_bin, write_toml_table

__all__ = ["FAST_POLL_ENV", "SuperNodeSupervisor", "flower_bin", "node_config_for"]

#: SuperExec polls for ClientApp tasks every 1 s by default; 50 ms costs nothing measurable.
FAST_POLL_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.05", "FLWR_TELEMETRY_ENABLED": "0"}


class SuperNodeSupervisor(SupervisedProcess):
    """``flower-supernode`` for one device, restarted on death, stopped with the agent."""

    def __init__(
        self,
        superlink: str,
        node_config: Mapping[str, object],
        state_dir: Path,
        *,
        port: int,
        isolation: str = "subprocess",
        tls: FlowerTls | None = None,
        env: Mapping[str, str] | None = None,
        pidfile: Path | None = None,
    ) -> None:
        if "device-id" not in node_config:
            raise ValueError("node_config must carry the device id ('device-id')")
        state_dir.mkdir(parents=True, exist_ok=True)
        self.node_config = dict(node_config)
        config_path = write_toml_table(state_dir / "node-config.toml", self.node_config)
        argv = [
            flower_bin("flower-supernode"),
            "--superlink", superlink,
            "--node-config", str(config_path),
            "--isolation", isolation,
            "--port", str(port),
        ]  # fmt: skip
        argv += tls.client_args() if tls is not None else ["--insecure"]
        merged = {**FAST_POLL_ENV, **(env or {})}
        # The ClientApp imports our packages; make sure the spawned processes can find them.
        merged.setdefault("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        super().__init__(
            argv, env=merged, log_path=state_dir / "supernode.log",
            name=f"supernode[{node_config['device-id']}]", pidfile=pidfile,
        )  # fmt: skip


def node_config_for(
    device_id: str,
    profile: str,
    ram_bytes: int,
    data_path: str,
    *,
    battery: float | None = None,
    labels: Mapping[str, str] | None = None,
    status_path: str = "",
    width: float | None = None,
) -> dict[str, object]:
    """The ``node_config`` an agent gives its SuperNode (what our ServerApp selects on).

    ``status_path`` names a JSON file the agent rewrites with live facts (``battery``,
    ``health``); the ClientApp reads it when asked, so selection sees current values without
    restarting the SuperNode.
    """
    cfg: dict[str, object] = {
        "device-id": device_id,
        "profile": profile,
        "ram-bytes": int(ram_bytes),
        "data-path": data_path,
        "health": "ok",
    }
    if battery is not None:
        cfg["battery"] = float(battery)
    if labels:
        cfg["labels"] = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    if status_path:
        cfg["status-path"] = status_path
    if width is not None:
        cfg["width"] = float(width)
    return cfg
