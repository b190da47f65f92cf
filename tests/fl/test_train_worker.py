"""The device's long-lived training worker: same round as in-process, refusals, fallback, restart.

Real worker processes on real Unix sockets (``TrainWorkerSupervisor``), a tiny DS-CNN on a
random 8x8 shard so a fit takes milliseconds once torch is loaded.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edgefleet.agent.fl.clientapp import WORKER_STATE, evaluate, fine_tune
from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.agent.fl.train_worker import main as worker_main
from edgefleet.agent.fl.train_worker_client import (
    TrainWorkerClient,
    TrainWorkerSupervisor,
    WorkerUnavailable,
)
from edgefleet.agent.fl.train_worker_wire import encode_arrays
from edgefleet.fl.contract import Metric, Record, TrainConfig
from edgefleet.fl.partition import Shard, save_shard
from edgefleet.flower import model as fl_model
from edgefleet.flower.strategies import to_record
from edgefleet.v1 import trainworker_pb2 as pb
from edgefleet.v1 import trainworker_pb2_grpc as pb_grpc

ARCH = "ds-cnn"
CONFIG = {"channels": [8, 16, 16], "strides": [1, 1], "num_classes": 3, "in_channels": 1}
HYPER: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 8,
    "lr": 0.1,
    "proximal_mu": 0.0,
    "seed": 7,
    "budget": 0,
}


def _shard() -> Shard:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 1, 8, 8)).astype(np.float32)
    y = np.arange(24, dtype=np.int64) % 3
    return Shard(x[:16], y[:16], x[16:], y[16:])


def _params() -> dict[str, Any]:
    return fl_model.initial_params(ARCH, override=json.dumps(CONFIG))


class Worker:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.shard = save_shard(_shard(), root / "shard.npz")
        self.socket = root / "tw.sock"
        self.proc = TrainWorkerSupervisor(self.socket, self.shard, root, name="test-worker")

    def health(self) -> pb.HealthResponse:
        with TrainWorkerClient(self.socket) as client:
            return client.health(timeout=30.0)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(tmp_path_factory.mktemp("tw"))
    w.proc.start()
    try:
        w.proc.wait_ready(timeout=60.0)
        yield w
    finally:
        w.proc.stop(timeout=5.0)


def test_the_socket_is_private_to_the_agents_user(worker: Worker) -> None:
    mode = os.stat(worker.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert Path(worker.health().data_path) == worker.shard


def test_a_worker_fit_equals_the_in_process_fit(worker: Worker) -> None:
    from edgefleet.agent.fl.torch_train import fit

    params = _params()
    with TrainWorkerClient(worker.socket) as client:
        remote = client.fit(ARCH, CONFIG, "", params, **HYPER)
        again = client.fit(ARCH, CONFIG, "", params, **HYPER)
    local = fit(ARCH, CONFIG, params, _shard(), **HYPER)
    assert list(remote.params) == list(local.params)  # the same trained keys, same order
    for k, v in local.params.items():
        assert remote.params[k].shape == v.shape
        np.testing.assert_allclose(remote.params[k], v, atol=1e-5)
        np.testing.assert_array_equal(again.params[k], remote.params[k])  # seeded: repeatable
    assert remote.scope == local.scope == "full" and remote.trained_params == local.trained_params
    assert math.isclose(remote.train_loss, local.train_loss, abs_tol=1e-5)
    assert remote.before == pytest.approx(local.before, abs=1e-5)
    assert (remote.num_examples, remote.eval_examples) == (16, 8)
    health = worker.health()
    assert health.torch_loaded and health.fits >= 2
    assert health.shard_cache_misses == 1 and health.shard_cache_hits >= 1  # loaded once


def _fit_request(**change: Any) -> pb.FitRequest:
    params = _params()
    request = pb.FitRequest(
        model=pb.ModelSpec(arch=ARCH, arch_config=json.dumps(CONFIG)),
        params=encode_arrays(params), epochs=1, batch_size=8, lr=0.1, seed=1,
    )  # fmt: skip
    for key, value in change.items():
        if key == "arch":
            request.model.arch = value
        elif key == "params":
            del request.params[:]
            request.params.extend(value)
        else:
            setattr(request, key, value)
    return request


def _bad_shape() -> list[pb.NamedArray]:
    params = _params()
    params["classifier.weight"] = np.zeros((4, 16), np.float32)
    return encode_arrays(params)


def _short_bytes() -> list[pb.NamedArray]:
    arrays = encode_arrays(_params())
    arrays[0].data = arrays[0].data[:-4]
    return arrays


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {"params": _bad_shape()},
            "param 'classifier.weight' has shape [4, 16]; ds-cnn needs [3, 16]",
        ),
        ({"lr": float("nan")}, "lr must be a positive finite number, got nan"),
        ({"arch": "no-such-net"}, "unknown architecture 'no-such-net'"),
        ({"params": _short_bytes()}, "bytes; shape"),
        ({"epochs": 0}, "epochs must be in [1, 1000], got 0"),
    ],
    ids=["wrong-shape", "nan-lr", "unknown-arch", "short-bytes", "no-epochs"],
)
def test_a_bad_request_is_invalid_argument_in_one_line(
    worker: Worker, change: dict[str, Any], says: str
) -> None:
    before = worker.health().rejected
    with grpc.insecure_channel(f"unix:{worker.socket}") as channel:
        stub = pb_grpc.TrainWorkerServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.Fit(_fit_request(**change), timeout=60)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in err.details() and "\n" not in err.details()
    assert worker.health().rejected == before + 1


def test_bytes_that_are_no_request_are_invalid_argument_not_unknown(worker: Worker) -> None:
    with grpc.insecure_channel(f"unix:{worker.socket}") as channel:
        fit: Any = channel.unary_unary("/edgefleet.v1.TrainWorkerService/Fit")
        with pytest.raises(grpc.RpcError) as info:
            fit(b"\xff\xff\xff", timeout=60)
    err: Any = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "malformed request" in err.details()


def test_a_missing_shard_and_a_budget_too_small_say_why(worker: Worker) -> None:
    moved = worker.shard.with_suffix(".moved")
    worker.shard.rename(moved)
    try:
        with TrainWorkerClient(worker.socket) as client, pytest.raises(RuntimeError) as info:
            client.fit(ARCH, CONFIG, "", _params(), **HYPER)
        assert "FAILED_PRECONDITION" in str(info.value) and "No such file" in str(info.value)
    finally:
        moved.rename(worker.shard)
    # the in-process path's MemoryError, with its numbers, raised on the ClientApp's side
    too_small = r"the model alone is \d+ bytes; the budget is 1000"
    with TrainWorkerClient(worker.socket) as client, pytest.raises(MemoryError, match=too_small):
        client.fit(ARCH, CONFIG, "", _params(), **{**HYPER, "budget": 1000})


def _context(worker: Worker, socket: str) -> Context:
    cfg = node_config_for("dev-1", "rpi4", 4 << 30, str(worker.shard), train_worker=socket)
    return Context(1, 2, cfg, RecordDict(), {})  # type: ignore[arg-type]


def _round_config() -> ConfigRecord:
    return ConfigRecord(
        {
            TrainConfig.ARCH: ARCH, TrainConfig.ARCH_CONFIG: json.dumps(CONFIG),
            TrainConfig.LR: 0.1, TrainConfig.LOCAL_EPOCHS: 1, TrainConfig.BATCH_SIZE: 8,
            TrainConfig.SERVER_ROUND: 1,
        }
    )  # fmt: skip


def test_a_clientapp_round_trains_in_the_worker_and_falls_back_without_it(
    worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = _params()
    ctx = _context(worker, str(worker.socket))
    fits, evaluates = worker.health().fits, worker.health().evaluates
    through = fine_tune(params, _round_config(), ctx)
    assert worker.health().fits == fits + 1  # the round went to the worker
    assert WORKER_STATE not in ctx.state.config_records

    gone = _context(worker, str(tmp_path / "none.sock"))
    here = fine_tune(params, _round_config(), gone)  # no worker: torch in this process
    assert worker.health().fits == fits + 1
    assert gone.state.config_records[WORKER_STATE]["fell-back"]  # said once per run
    a, b = (c.array_records[Record.ARRAYS] for c in (through, here))
    for k in params:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-5)
    ma, mb = (c.metric_records[Record.METRICS] for c in (through, here))
    assert ma[Metric.NUM_EXAMPLES] == mb[Metric.NUM_EXAMPLES] == 16
    assert ma[Metric.EVAL_ACC] == pytest.approx(mb[Metric.EVAL_ACC])

    for attr in ("_run_id", "_task_id", "_node_id"):  # a message needs a task identity
        monkeypatch.setattr(TaskIdentity, attr, 1)
    msg = Message(
        RecordDict({Record.ARRAYS: to_record(params), Record.CONFIG: _round_config()}),
        dst_node_id=1, message_type="evaluate",
    )  # fmt: skip
    reply = evaluate(msg, ctx)
    assert worker.health().evaluates == evaluates + 1
    assert reply.content.metric_records[Record.METRICS][Metric.NUM_EXAMPLES] == 8


def test_a_worker_serving_another_shard_is_not_used(worker: Worker, tmp_path: Path) -> None:
    other = save_shard(_shard(), tmp_path / "other.npz")
    cfg = node_config_for("dev-2", "rpi4", 4 << 30, str(other), train_worker=str(worker.socket))
    ctx = Context(1, 2, cfg, RecordDict(), {})  # type: ignore[arg-type]
    fits = worker.health().fits
    fine_tune(_params(), _round_config(), ctx)
    assert worker.health().fits == fits
    assert ctx.state.config_records[WORKER_STATE]["fell-back"]


def test_a_killed_worker_is_restarted_by_its_supervisor(tmp_path: Path) -> None:
    w = Worker(tmp_path / "k")
    w.proc.backoff = 0.1
    w.proc.start()
    try:
        first = w.proc.wait_ready(timeout=60.0).pid
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 60.0
        while w.proc.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.proc.restarts == 1
        assert w.proc.wait_ready(timeout=60.0).pid not in (0, first)
    finally:
        w.proc.stop(timeout=5.0)
    assert not w.proc.running()
    with TrainWorkerClient(w.socket) as client, pytest.raises(WorkerUnavailable):
        client.health(timeout=1.0)  # stopped: the socket is gone


def test_a_socket_path_too_long_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = tmp_path / ("d" * 120) / "tw.sock"
    assert worker_main(["--socket", str(long), "--data-path", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: socket path is") and err.count("\n") == 1


def test_the_agents_federation_runs_a_worker_for_its_shard_and_stops_it(tmp_path: Path) -> None:
    from edgefleet.agent.federation import FederationMember
    from edgefleet.catalog import get_profile

    member = FederationMember(tmp_path, get_profile("rpi4"), None, ca_cert=None)
    member.dir.mkdir(parents=True)
    shard = save_shard(_shard(), member.dir / "shard.npz")
    member.worker = member._start_worker(shard)
    assert member.worker is not None
    assert Path(member.worker.wait_ready(timeout=60.0).data_path) == shard
    member.stop()
    assert member.worker is None and not (member.dir / "train-worker.pid").exists()


@pytest.mark.slow  # a real SuperLink, two SuperNodes and their workers: ~1 min on a loaded box
def test_real_supernode_rounds_train_a_conv_net_in_each_devices_worker(tmp_path: Path) -> None:
    from edgefleet.devtools.fl_local import LocalFederation, wait_progress

    with LocalFederation(tmp_path / "fed", num_nodes=2, alpha=1.0, seed=1) as fed:
        assert len(fed.workers) == 2
        out = fed.run(
            {"arch": "ds-cnn", "num-rounds": 2, "min-devices": 2, "lr": 0.05,
             "local-epochs": 1, "final-evaluate": True, "round-timeout": 600.0},
        )  # fmt: skip
        doc = wait_progress(out, timeout=900)
        assert doc["state"] == "succeeded", doc.get("reason")
        for w in fed.workers:
            with TrainWorkerClient(w.socket_path) as client:
                health = client.health()
            # every round and the final evaluation ran in the worker, torch imported once
            assert (health.fits, health.evaluates) == (2, 1)
            assert health.shard_cache_misses == 1
