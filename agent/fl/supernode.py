"""Run this device's Flower SuperNode under supervision.

The agent owns the SuperNode's life: it starts ``flower-supernode`` with a ``node_config``
naming the device (id, profile, resources, local data shard), restarts it if it dies and
stops it -- with its SuperExec and any running ClientApp -- when the agent shuts down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edgefleet.fl.process import SupervisedProcess, flower_bin, write_toml_table

__all__ = ["FAST_POLL_ENV", "SuperNodeSupervisor", "flower_bin"]

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
        insecure: bool = True,
        env: Mapping[str, str] | None = None,
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
        if insecure:
            argv.append("--insecure")
        merged = {**FAST_POLL_ENV, **(env or {})}
        # The ClientApp imports our packages; make sure the spawned processes can find them.
        merged.setdefault("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        super().__init__(
            argv, env=merged, log_path=state_dir / "supernode.log",
            name=f"supernode[{node_config['device-id']}]",
        )  # fmt: skip
