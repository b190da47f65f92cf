"""Federated training on the light TinyTL path: a memory-tight device trains fewer tensors.

The ClientApp plans its round under the device's budget with on-device fine-tuning's planner
(full, sparse, TinyTL, head), trains through the bit-packed-mask autograd path, and replies
with the trained tensors only; the server averages each tensor over the replies holding it.
No Flower processes: the ClientApp's handler and the strategy are called directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edgefleet.agent.fl.clientapp import fine_tune, reply_tensors
from edgefleet.agent.fl.supernode import node_config_for
from edgefleet.fl.contract import Metric, Node, Record, TrainConfig
from edgefleet.fl.partition import Shard, save_shard
from edgefleet.flower import model as fl_model
from edgefleet.flower.strategies import PartialFedAvg, arrays_of, to_record

ARCH = "ds-cnn"
CONFIG = {"channels": [8, 16, 16], "strides": [1, 1], "num_classes": 3, "in_channels": 1}
#: between the sparse update's plan (~190 KB at batch 8) and full fine-tuning's (~350 KB)
BUDGET = 270_000
#: the sparse update with two layers: BatchNorm biases, the last two pointwise convs, the head
SPARSE = {"stem.1.bias", "blocks.0.1.bias", "blocks.0.4.bias", "blocks.1.1.bias",
          "blocks.1.4.bias", "blocks.0.3.weight", "blocks.1.3.weight", "classifier.weight",
          "classifier.bias"}  # fmt: skip


def _context(tmp: Path, budget: int) -> Context:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 1, 8, 8)).astype(np.float32)
    y = np.arange(24, dtype=np.int64) % 3
    shard = save_shard(Shard(x[:16], y[:16], x[16:], y[16:]), tmp / "shard.npz")
    cfg = {**node_config_for("tight", "rpi-zero2w", budget, str(shard)), Node.BUDGET_FRACTION: 1.0}
    return Context(1, 2, cfg, RecordDict(), {})  # type: ignore[arg-type]


def _round_config(**extra: Any) -> ConfigRecord:
    return ConfigRecord(
        {
            TrainConfig.ARCH: ARCH, TrainConfig.ARCH_CONFIG: json.dumps(CONFIG),
            TrainConfig.LR: 0.1, TrainConfig.LOCAL_EPOCHS: 1, TrainConfig.BATCH_SIZE: 8,
            TrainConfig.SERVER_ROUND: 1, **extra,
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def light_reply(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], RecordDict]:
    """One ClientApp train call on a device whose budget holds the sparse update, not full."""
    params = fl_model.initial_params(ARCH, override=json.dumps(CONFIG))
    ctx = _context(tmp_path_factory.mktemp("tight"), BUDGET)
    return params, fine_tune(params, _round_config(**{TrainConfig.PARTIAL_UPDATES: True}), ctx)


def test_a_tight_device_trains_a_light_scope_and_sends_only_those_tensors(
    light_reply: tuple[dict[str, Any], RecordDict],
) -> None:
    params, content = light_reply
    sent = arrays_of(content.array_records[Record.ARRAYS])
    assert set(sent) == SPARSE  # no frozen conv weights, no BatchNorm statistics
    assert all(not np.array_equal(sent[k], params[k]) for k in SPARSE)  # each one trained
    metrics = content.metric_records[Record.METRICS]
    assert metrics[Metric.TRAINED_PARAMS] == sum(params[k].size for k in SPARSE)
    assert metrics[Metric.BATCH_SIZE] == 8  # the scope shrank, not the batch


def test_without_partial_updates_the_reply_is_the_whole_model_in_the_order_sent() -> None:
    received = {"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)}
    trained = {"b": np.ones(3, np.float32)}
    whole = reply_tensors(received, trained, partial=False)
    assert list(whole) == ["a", "b"] and whole["a"] is received["a"] and whole["b"] is trained["b"]
    assert list(reply_tensors(received, trained, partial=True)) == ["b"]


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity (Flower sets it in the ServerApp process)."""
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [11, 12]


def _reply(msg: Message, arrays: dict[str, Any], examples: int) -> Message:
    metrics = MetricRecord({Metric.NUM_EXAMPLES: examples})
    return Message(RecordDict({Record.ARRAYS: to_record(arrays), Record.METRICS: metrics}),
                   reply_to=msg)  # fmt: skip


@pytest.mark.usefixtures("task")
def test_partial_replies_average_each_tensor_over_its_holders(
    light_reply: tuple[dict[str, Any], RecordDict],
) -> None:
    params, content = light_reply
    light = arrays_of(content.array_records[Record.ARRAYS])
    strategy = PartialFedAvg(min_train_nodes=2, weighted_by_key=Metric.NUM_EXAMPLES,
                             arrayrecord_key=Record.ARRAYS, configrecord_key=Record.CONFIG)  # fmt: skip
    config = ConfigRecord({TrainConfig.ARCH: ARCH})
    messages = list(strategy.configure_train(1, to_record(params), config, _Grid()))  # type: ignore[arg-type]
    assert all(
        m.content.config_records[Record.CONFIG][TrainConfig.PARTIAL_UPDATES] for m in messages
    )

    # the light device alone: what it did not train is exactly the global model
    merged, _ = strategy.aggregate_train(1, [_reply(messages[0], light, 16)])
    assert merged is not None
    out = arrays_of(merged)
    for k in params:
        np.testing.assert_array_equal(out[k], light[k] if k in SPARSE else params[k])

    # with a device that trained everything: shared tensors are averaged by examples, the rest
    # is the full device's own (not pulled back by the light device's unchanged copy)
    full = {k: v + 1.0 for k, v in params.items()}
    merged, _ = strategy.aggregate_train(
        1, [_reply(messages[0], light, 16), _reply(messages[1], full, 48)]
    )
    assert merged is not None
    out = arrays_of(merged)
    for k in params:
        want = (16 * light[k] + 48 * full[k]) / 64 if k in SPARSE else full[k]
        np.testing.assert_allclose(out[k], want, rtol=1e-5, atol=1e-6)


def test_an_ample_budget_trains_everything_without_the_dry_runs() -> None:
    from edgefleet.agent.fl.torch_train import plan_scope

    params = fl_model.initial_params(ARCH, override=json.dumps(CONFIG))
    scoped = plan_scope(ARCH, CONFIG, params, [1, 1, 8, 8], 4 << 20, 8)
    assert scoped.scope == "full" and set(scoped.trained) == set(params)
    assert scoped.plan is not None and scoped.plan.working == 0  # no dry run measured it


def test_a_budget_below_the_model_itself_is_refused_with_the_numbers(tmp_path: Path) -> None:
    params = fl_model.initial_params(ARCH, override=json.dumps(CONFIG))
    with pytest.raises(MemoryError, match=r"the model alone is \d+ bytes; the budget is 1000"):
        fine_tune(params, _round_config(), _context(tmp_path, 1000))


@pytest.mark.slow  # seven measured plans: ~10 s of CPU
def test_when_not_even_the_head_fits_at_batch_two_the_plans_say_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgefleet.agent import finetune
    from edgefleet.agent.fl.torch_train import plan_scope

    params = fl_model.initial_params(ARCH, override=json.dumps(CONFIG))
    weights = sum(v.nbytes for v in params.values())
    with pytest.raises(MemoryError, match=r"nothing fits: .*head fine-tuning at batch 2 needs"):
        plan_scope(ARCH, CONFIG, params, [1, 1, 8, 8], weights + 1, 2, sparse_layers=0)
    # at a larger batch, the head at batch 2 is planned once before any halving: when it does
    # not fit, the device stops there instead of re-planning every scope at 4 and 2
    planned: list[tuple[str, int]] = []
    real = finetune.plan_memory

    def counting(model: Any, scope: str, batch: int, *args: Any) -> Any:
        planned.append((scope, batch))
        return real(model, scope, batch, *args)

    monkeypatch.setattr(finetune, "plan_memory", counting)
    with pytest.raises(MemoryError, match=r"nothing fits: head fine-tuning at batch 2 needs"):
        plan_scope(ARCH, CONFIG, params, [1, 1, 8, 8], weights + 1, 8, sparse_layers=0)
    assert planned == [("full", 8), ("tinytl", 8), ("head", 8), ("head", 2)]
