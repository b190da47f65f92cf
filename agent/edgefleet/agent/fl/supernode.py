"""Run this device's Flower SuperNode under supervision.

The agent owns the SuperNode's life: it starts ``flower-supernode`` with a ``node_config``
naming the device (id, profile, resources, local data shard), restarts it if it dies and
stops it -- with its SuperExec and any running ClientApp -- when the agent shuts down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from edgefleet.fl.contract import FAST_POLL_ENV, Node, NodeFacts
from edgefleet.fl.process import FlowerTls, SupervisedProcess, flower_bin, write_toml_table

__all__ = ["SuperNodeSupervisor", "flower_bin", "node_config_for"]


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
        if Node.DEVICE_ID not in node_config:
            raise ValueError(f"node_config must carry the device id ({Node.DEVICE_ID!r})")
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
            name=f"supernode[{node_config[Node.DEVICE_ID]}]", pidfile=pidfile,
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
    runtime: str = "",
    proxy: str = "",
    partition_id: int | None = None,
    train_worker: str = "",
    lm_base_dir: str = "",
) -> dict[str, object]:
    """The ``node_config`` an agent gives its SuperNode (what our ServerApp selects on).

    The facts (:class:`edgefleet.fl.contract.NodeFacts`) plus where the local data is.
    ``status_path`` names a JSON file the agent rewrites with live facts (``battery``,
    ``health``); the ClientApp reads it when asked, so selection sees current values without
    restarting the SuperNode. ``train_worker`` is the socket of the device's training worker
    (:mod:`edgefleet.agent.fl.train_worker`), when it runs one. ``lm_base_dir`` is where the
    device caches LoRA base LMs sent to it by message (:mod:`edgefleet.agent.fl.lm_base_cache`).
    """
    facts = NodeFacts(
        device_id, profile, int(ram_bytes), battery=battery, labels=dict(labels or {}),
        width=width, runtime=runtime, proxy=proxy,
    )  # fmt: skip
    cfg = {**facts.to_node_config(), Node.DATA_PATH: data_path}
    if status_path:
        cfg[Node.STATUS_PATH] = status_path
    if partition_id is not None:
        cfg[Node.PARTITION_ID] = int(partition_id)
    if train_worker:
        cfg[Node.TRAIN_WORKER] = train_worker
    if lm_base_dir:
        cfg[Node.LM_BASE_DIR] = lm_base_dir
    return cfg
