"""A federation on loopback: one supervised SuperLink and N supervised SuperNodes with shards.

Used by the tests, ``benchmarks/fl_rounds.py`` and ``edgefleet train start --local N``. Each
SuperNode is configured the way an agent configures its own (device id, profile, resources,
a non-IID digits shard), so what runs here is the same code path as on a fleet -- including
the device's training worker next to each SuperNode (``train_workers``), which conv nets train
in instead of importing torch in every per-message ClientApp process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.agent.fl.supernode import SuperNodeSupervisor, node_config_for
from edgefleet.agent.fl.train_worker_client import (
    TrainWorkerSupervisor,
    socket_path_in,
    torch_installed,
)
from edgefleet.catalog import get_profile
from edgefleet.coordinator.fl.superlink import (
    SuperLinkSupervisor,
    free_port,
    submit,
    superlink_tls,
    wait_listening,
    write_app,
)
from edgefleet.fl.contract import FAST_POLL_ENV, Node
from edgefleet.fl.partition import Shard, make_shards, save_shard
from edgefleet.fl.process import FlowerTls

__all__ = ["LocalFederation", "free_port", "pretrain_biased", "wait_progress"]


def pretrain_biased(
    arch: str, out: Path, seed: int = 0, classes: int = 5, per_class: int = 8
) -> Path:
    """A base model trained on a small biased subset (a few samples of the first classes).

    The federated runs start from it, so improvement on the clients' data is measurable.
    """
    from edgefleet.fl import mlp_numpy
    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.data import load_dataset

    ds = load_dataset("digits")
    idx = np.concatenate([np.flatnonzero(ds.y_train == c)[:per_class] for c in range(classes)])
    params = fl_model.initial_params(arch, seed=seed)
    if arch == "mlp":
        params, _ = mlp_numpy.train(params, ds.x_train[idx], ds.y_train[idx], epochs=20, lr=0.05)
    return fl_model.save_params(params, out)


@dataclass
class LocalFederation:
    """Start with :meth:`start`, stop with :meth:`stop` (or use as a context manager)."""

    root: Path
    num_nodes: int = 2
    profiles: Sequence[str] = ("rpi4",)
    alpha: float = 0.5
    seed: int = 0
    env: Mapping[str, str] = field(default_factory=lambda: dict(FAST_POLL_ENV))
    superlink: SuperLinkSupervisor | None = None
    supernodes: list[SuperNodeSupervisor] = field(default_factory=list)
    port: int = 0
    #: per-node overrides of the reported facts, e.g. ``{4: {"width": 0.25}}``
    node_facts: Mapping[int, Mapping[str, object]] = field(default_factory=dict)
    #: serve the SuperLink over TLS (a CA made in ``root/tls``), as a fleet's coordinator does
    tls: bool = False
    flower_tls: FlowerTls | None = None
    #: each node's local data (one shard per node, e.g. one voice each from
    #: ``edgefleet.fl.partition.group_shards``); default: Dirichlet shards of digits
    local_shards: Sequence[Shard] | None = None
    #: each node's local data file as is (e.g. a text shard of
    #: ``edgefleet.datasets.text_shards`` for a LoRA run); overrides the shards above
    data_paths: Sequence[Path] | None = None
    #: the server-side test set ``(x, y)``; default: the digits test split
    test_set: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]] | None = None
    #: start each device's training worker (as an agent with torch does); it imports torch
    #: on its first conv-net round only, so a digits (numpy MLP) run pays a small idle process
    train_workers: bool = True
    workers: list[TrainWorkerSupervisor] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The SuperLink's host:port."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalFederation:
        """Shards on disk, SuperLink up, SuperNodes up."""
        from edgefleet.modelops.data import load_dataset

        self.root.mkdir(parents=True, exist_ok=True)
        if self.local_shards is not None and len(self.local_shards) < self.num_nodes:
            raise ValueError(f"{len(self.local_shards)} local shards for {self.num_nodes} nodes")
        if self.test_set is None or self.local_shards is None:
            ds = load_dataset("digits")
        x_test, y_test = self.test_set if self.test_set is not None else (ds.x_test, ds.y_test)
        np.savez(self.root / "test.npz", x=x_test, y=y_test)
        self.port = self.port or free_port()
        if self.tls:
            self.flower_tls = superlink_tls(self.root / "tls", ["127.0.0.1", "localhost"])
        self.superlink = SuperLinkSupervisor(
            self.root / "superlink", port=self.port, env=self.env, tls=self.flower_tls
        )
        self.superlink.start()
        _wait_port(self.port)
        self.shards = (
            list(self.local_shards)
            if self.local_shards is not None
            else make_shards(ds.x_train, ds.y_train, self.num_nodes, self.alpha, self.seed)
        )
        for i in range(self.num_nodes):
            self.add_node(i, **self.node_facts.get(i, {}))
        return self

    def add_node(self, i: int, **facts: object) -> SuperNodeSupervisor:
        """Start SuperNode ``i`` (its facts from the catalog profile, overridable)."""
        profile = get_profile(self.profiles[i % len(self.profiles)])
        shard = (
            self.data_paths[i]
            if self.data_paths is not None
            else save_shard(self.shards[i], self.root / "data" / f"shard-{i}.npz")
        )
        node_dir = self.root / f"node-{i}"
        worker = self._start_worker(node_dir, Path(shard)) if self.train_workers else None
        node_config: dict[str, object] = {
            **node_config_for(
                f"sim-{i:03d}", profile.name, profile.ram_bytes, str(shard), battery=80,
                partition_id=i, train_worker=str(worker.socket_path) if worker else "",
            ),
            Node.NUM_PARTITIONS: self.num_nodes,
            **facts,
        }  # fmt: skip
        node = SuperNodeSupervisor(
            self.address, node_config, node_dir, port=free_port(), env=self.env,
            tls=FlowerTls(self.flower_tls.ca) if self.flower_tls else None,
        )  # fmt: skip
        node.start()
        self.supernodes.append(node)
        return node

    def _start_worker(self, node_dir: Path, shard: Path) -> TrainWorkerSupervisor | None:
        """Node ``node_dir``'s training worker (None without torch or room for a socket path)."""
        socket_path = socket_path_in(node_dir)
        if socket_path is None or not torch_installed():
            return None
        worker = TrainWorkerSupervisor(socket_path, shard.absolute(), node_dir,
                                       name=f"train-worker[{node_dir.name}]")  # fmt: skip
        worker.start()
        self.workers.append(worker)
        return worker

    def run(self, config: Mapping[str, object], name: str = "run") -> Path:
        """Submit our app with ``config``; returns the progress directory."""
        out = self.root / name
        cfg = {"test-path": str(self.root / "test.npz"), "out-dir": str(out), **config}
        app = write_app(self.root / f"app-{name}", cfg)
        submit(
            app, self.root / "flwr-home", self.address,
            ca=self.flower_tls.ca if self.flower_tls else None,
        )  # fmt: skip
        return out

    def stop(self) -> None:
        """Stop every SuperNode (in parallel: each may wait for its ClientApp), then the
        SuperLink."""
        procs = [*self.supernodes, *self.workers]
        with ThreadPoolExecutor(max_workers=max(1, len(procs))) as pool:
            list(pool.map(lambda proc: proc.stop(timeout=3.0), procs))
        if self.superlink is not None:
            self.superlink.stop(timeout=3.0)

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_port(port: int, timeout: float = 30.0) -> None:
    if not wait_listening("127.0.0.1", port, timeout):
        raise TimeoutError(f"SuperLink did not open port {port}")


def wait_progress(out_dir: Path, timeout: float = 300.0) -> dict[str, Any]:
    """Block until the run in ``out_dir`` has finished (succeeded or failed)."""
    path = out_dir / "progress.json"
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if path.exists():
            doc = json.loads(path.read_text())
            if doc.get("state") != "running":
                return doc
        time.sleep(0.2)
    raise TimeoutError(
        f"run in {out_dir} did not finish in {timeout:.0f}s (last: {doc.get('state')})"
    )
