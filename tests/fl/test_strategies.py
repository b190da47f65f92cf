"""The shared contract's node facts, and HeteroFL as a Flower strategy (no Flower processes)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edgefleet.agent.fl.clientapp import _facts
from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.fl.contract import FACT_KEYS, Metric, Node, NodeFacts, Record, TrainConfig
from edgefleet.flower import model as fl_model
from edgefleet.flower.serverapp import device_facts
from edgefleet.flower.strategies import HeteroFL, arrays_of, to_record


def test_node_facts_round_trip_through_a_node_config() -> None:
    facts = NodeFacts(
        "dev-1", "cortex-m7", 1 << 20, battery=40.0, labels={"site": "lab", "floor": "2"},
        width=0.5, runtime="tflm", proxy="agent",
    )  # fmt: skip
    cfg = facts.to_node_config()
    assert set(cfg) <= set(FACT_KEYS)
    assert cfg[Node.LABELS] == "floor=2,site=lab"
    assert NodeFacts.from_node_config(cfg) == facts


def test_what_the_agent_writes_is_what_the_serverapp_selects_on() -> None:
    cfg = node_config_for("dev-2", "rpi4", 4 << 30, "/d.npz", labels={"site": "a"}, runtime="ort")
    assert cfg[Node.DATA_PATH] == "/d.npz"
    reported = _facts(Context(1, 2, cfg, RecordDict(), {}))  # type: ignore[arg-type]  # what the ClientApp's query reply carries
    assert Node.DATA_PATH not in reported
    view = device_facts(reported)
    assert view == {
        "device": "dev-2", "profile": "rpi4", "ram": float(4 << 30), "battery": 100.0,
        "health": "ok", "labels": {"site": "a"}, "width": None, "runtime": "ort", "proxy": "",
    }  # fmt: skip


class _Grid:
    """Just enough of a Grid for a strategy's sampling."""

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return self.nodes


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity (Flower sets it in the ServerApp process)."""
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _reply(msg: Message, examples: int, acc: float) -> Message:
    metrics = MetricRecord({Metric.NUM_EXAMPLES: examples, Metric.EVAL_ACC: acc})
    arrays = msg.content.array_records[Record.ARRAYS]
    return Message(RecordDict({Record.ARRAYS: arrays, Record.METRICS: metrics}), reply_to=msg)


@pytest.mark.usefixtures("task")
def test_heterofl_sends_each_node_its_slice_and_merges_them_back() -> None:
    full = fl_model.initial_params("mlp", seed=3)
    widths = {11: 1.0, 12: 0.5, 13: 0.25}
    strategy = HeteroFL(widths, "mlp", min_train_nodes=2)
    grid = _Grid([11, 12, 13, 99])  # 99 has no width: never sampled
    config = ConfigRecord({TrainConfig.ARCH: "mlp", TrainConfig.LR: 0.1})
    messages = list(strategy.configure_train(4, to_record(full), config, grid))  # type: ignore[arg-type]
    assert sorted(m.metadata.dst_node_id for m in messages) == [11, 12, 13]
    for m in messages:
        width = widths[m.metadata.dst_node_id]
        assert m.metadata.message_type == MessageType.TRAIN
        shapes = {k: v.shape for k, v in arrays_of(m.content.array_records[Record.ARRAYS]).items()}
        assert shapes == fl_model.shapes("mlp", width)
        cfg = m.content.config_records[Record.CONFIG]
        assert json.loads(str(cfg[TrainConfig.ARCH_CONFIG])) == fl_model.arch_config("mlp", width)
        assert cfg[TrainConfig.SERVER_ROUND] == 4 and cfg[TrainConfig.LR] == 0.1

    # every node sends its slice back unchanged: the global model is unchanged
    replies = [_reply(m, 10 * (i + 1), 0.5 + 0.1 * i) for i, m in enumerate(messages)]
    merged, metrics = strategy.aggregate_train(4, replies)
    assert merged is not None and metrics is not None
    for k, v in arrays_of(merged).items():
        np.testing.assert_allclose(v, full[k], rtol=1e-6)
    assert metrics[Metric.EVAL_ACC] == pytest.approx((10 * 0.5 + 20 * 0.6 + 30 * 0.7) / 60)

    evals = list(strategy.configure_evaluate(5, merged, ConfigRecord(), grid))  # type: ignore[arg-type]
    assert {m.metadata.message_type for m in evals} == {MessageType.EVALUATE}
    assert len(evals) == 3


@pytest.mark.usefixtures("task")
def test_heterofl_samples_without_waiting_and_skips_evaluation_when_asked() -> None:
    strategy = HeteroFL({1: 1.0, 2: 1.0}, "mlp", fraction_evaluate=0.0, min_train_nodes=3)
    arrays = to_record(fl_model.initial_params("mlp"))
    # fewer nodes than min-train: the round loop fails the round; the strategy never blocks
    assert len(list(strategy.configure_train(1, arrays, ConfigRecord(), _Grid([1, 2])))) == 2  # type: ignore[arg-type]
    assert list(strategy.configure_evaluate(1, arrays, ConfigRecord(), _Grid([1, 2]))) == []  # type: ignore[arg-type]
