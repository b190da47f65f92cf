"""Light-scope devices under SecAgg+: the secure sum's per-tensor mean equals PartialFedAvg's.

Flower's real SecAgg+ workflow (server) and ``secaggplus_mod`` (client) run in this process:
a loopback Grid hands each message to its node's mod chain at once, so the four stages (keys,
shares, masked vectors, unmasking) run as over a SuperLink, without processes or sockets.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from edgefleet.agent.fl.clientapp import (
    _secagg_when_asked,
    legacy_fitres,
    reply_tensors,
    secure_partial_vector,
)
from edgefleet.fl.contract import Metric, Record, TrainConfig
from edgefleet.flower.secagg import holders_mean, secure_round
from edgefleet.flower.strategies import PartialFedAvg, arrays_of, to_record

Arrays = dict[str, np.ndarray[Any, Any]]
Handler = Callable[[Message, Context], Message]


class LoopbackGrid(Grid):
    """A Grid whose nodes are mod chains in this process: a push runs them, a pull collects."""

    def __init__(self, nodes: Mapping[int, Handler]) -> None:
        self._nodes = dict(nodes)
        self._contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in nodes
        }
        self._replies: dict[str, Message] = {}
        self._run = Run.create_empty(1)

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError  # deprecated in Flower; the workflow builds Messages itself

    def get_node_ids(self) -> Iterable[int]:
        return list(self._nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = mid = uuid.uuid4().hex
            node = msg.metadata.dst_node_id
            # copies both ways, as the wire makes them: the mod edits records it received
            reply = self._nodes[node](copy.deepcopy(msg), self._contexts[node])
            self._replies[mid] = copy.deepcopy(reply)
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def _device(trained: Arrays, examples: int, seen: list[bool]) -> Handler:
    """A node whose train handler answers ``trained`` as the ClientApp lays it out."""

    def train(msg: Message, _ctx: Context) -> Message:
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        names = [str(k) for k in json.loads(str(fitins.config["param-names"]))]
        received = dict(zip(names, parameters_to_ndarrays(fitins.parameters), strict=True))
        partial = bool(fitins.config.get(TrainConfig.PARTIAL_UPDATES))
        seen.append(partial)
        vector = (
            secure_partial_vector(names, received, trained)
            if partial
            else list(reply_tensors(received, trained, partial=False).values())
        )
        return Message(legacy_fitres(vector, examples), reply_to=msg)

    return lambda msg, ctx: _secagg_when_asked(msg, ctx, train)


GLOBAL: Arrays = {
    "conv.weight": np.full((4, 3), 0.5, np.float32),
    "conv.bias": np.zeros(4, np.float32),
    "head.weight": np.full((2, 4), -0.25, np.float32),
    "head.bias": np.zeros(2, np.float32),
    "bn.running_mean": np.full(3, 0.1, np.float32),  # nobody trains it
}


def _replies() -> list[tuple[Arrays, int]]:
    rng = np.random.default_rng(7)

    def moved(*names: str) -> Arrays:
        return {
            k: GLOBAL[k] + np.asarray(rng.normal(0, 0.5, GLOBAL[k].shape), np.float32)
            for k in names
        }

    full = moved("conv.weight", "conv.bias", "head.weight", "head.bias")
    tinytl = moved("conv.bias", "head.weight", "head.bias")  # biases + head
    head = moved("head.weight", "head.bias")
    return [(full, 30), (tinytl, 10), (head, 20)]


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity (Flower sets it in the ServerApp process)."""
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _secure(partial: bool) -> tuple[Arrays, list[bool]]:
    seen: list[bool] = []
    grid = LoopbackGrid({11 + i: _device(t, n, seen) for i, (t, n) in enumerate(_replies())})
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    out = secure_round(grid, ctx, [11, 12, 13], GLOBAL, {}, 1, 30.0, partial=partial)
    assert out is not None, "SecAgg+ halted"
    return out, seen


def _partial_fedavg() -> Arrays:
    """Plain PartialFedAvg (Flower's message path, no masking) on the same three replies."""
    strategy = PartialFedAvg(min_train_nodes=3, weighted_by_key=Metric.NUM_EXAMPLES,
                             arrayrecord_key=Record.ARRAYS, configrecord_key=Record.CONFIG)  # fmt: skip
    grid = LoopbackGrid({11: _device({}, 1, []), 12: _device({}, 1, []), 13: _device({}, 1, [])})
    msgs = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), grid))
    replies = [
        Message(RecordDict({Record.ARRAYS: to_record(t),
                            Record.METRICS: MetricRecord({Metric.NUM_EXAMPLES: n})}), reply_to=m)
        for m, (t, n) in zip(msgs, _replies(), strict=True)
    ]  # fmt: skip
    merged, _ = strategy.aggregate_train(1, replies)
    assert merged is not None
    return arrays_of(merged)


@pytest.mark.usefixtures("task")
def test_the_partial_secure_sum_equals_partial_fedavg_on_the_same_replies() -> None:
    secure, seen = _secure(partial=True)
    plain = _partial_fedavg()
    assert seen == [True, True, True]  # every device was told to send the fixed layout
    for k in GLOBAL:  # SecAgg+ quantizes each entry to 2**22 steps over [-8, 8]
        np.testing.assert_allclose(secure[k], plain[k], atol=2e-4, err_msg=k)
    # trained by nobody: the global value, exactly (zeros quantize without error)
    np.testing.assert_array_equal(secure["bn.running_mean"], GLOBAL["bn.running_mean"])
    # trained by the full device alone: its own tensor, not diluted by the light devices
    full, _ = _replies()[0]
    np.testing.assert_allclose(secure["conv.weight"], full["conv.weight"], atol=2e-4)


@pytest.mark.usefixtures("task")
def test_whole_models_under_secagg_dilute_what_light_devices_did_not_train() -> None:
    whole, seen = _secure(partial=False)
    assert seen == [False, False, False]
    (full, n_full), _, _ = _replies()
    # conv.weight: the full device's tensor pulled towards the global one by 30 of 60 examples
    want = (n_full * full["conv.weight"] + 30 * GLOBAL["conv.weight"]) / 60
    np.testing.assert_allclose(whole["conv.weight"], want, atol=2e-4)
    assert not np.allclose(whole["conv.weight"], full["conv.weight"], atol=1e-2)


def test_the_layout_zeroes_untrained_tensors_and_appends_their_weights() -> None:
    names = list(GLOBAL)
    trained = {"head.bias": np.ones(2, np.float32)}
    vector = secure_partial_vector(names, GLOBAL, trained)
    assert [v.shape for v in vector[:-1]] == [GLOBAL[k].shape for k in names]
    assert not any(v.any() for k, v in zip(names, vector, strict=False) if k != "head.bias")
    np.testing.assert_array_equal(vector[-1], [0, 0, 0, 1, 0])


def test_a_sum_without_the_weight_vector_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="5 tensors and a weight vector of 5; got 5 arrays"):
        holders_mean(GLOBAL, list(GLOBAL.values()))


# --- client-side DP with light-scope replies ------------------------------------------------


def _train_msg(arrays: Arrays, **config: Any) -> Message:
    content = RecordDict(
        {Record.ARRAYS: to_record(arrays), Record.CONFIG: ConfigRecord(dict(config))}
    )
    return Message(content, dst_node_id=11, message_type="train")


@pytest.mark.usefixtures("task")
def test_a_partial_reply_is_clipped_as_the_whole_model_and_stays_partial() -> None:
    from edgefleet.agent.fl.dp_clip import clip_when_asked

    received = {"conv.weight": np.ones((2, 2), np.float32), "head.bias": np.zeros(2, np.float32)}
    msg = _train_msg(received, clipping_norm=1.0, **{TrainConfig.PARTIAL_UPDATES: True})

    def light(m: Message, _ctx: Context) -> Message:  # trained the head only: delta (3, 4)
        trained = {"head.bias": np.asarray([3.0, 4.0], np.float32)}
        return Message(RecordDict({Record.ARRAYS: to_record(trained)}), reply_to=m)

    ctx = Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={})
    out = clip_when_asked(msg, ctx, light)
    assert not out.has_error(), out.error
    sent = arrays_of(out.content.array_records[Record.ARRAYS])
    assert list(sent) == ["head.bias"]  # the untrained tensor does not travel
    np.testing.assert_allclose(sent["head.bias"], [0.6, 0.8], rtol=1e-6)  # norm 5 -> 1


def _dp_replies(msgs: list[Message]) -> list[Message]:
    return [
        Message(RecordDict({Record.ARRAYS: to_record(t),
                            Record.METRICS: MetricRecord({Metric.NUM_EXAMPLES: n})}), reply_to=m)
        for m, (t, n) in zip(msgs, _replies(), strict=True)
    ]  # fmt: skip


def _dp_strategy(noise: float) -> Any:
    from edgefleet.flower.strategies import PartialClientSideFixedClipping

    base = PartialFedAvg(min_train_nodes=3, weighted_by_key=Metric.NUM_EXAMPLES,
                         arrayrecord_key=Record.ARRAYS, configrecord_key=Record.CONFIG)  # fmt: skip
    return PartialClientSideFixedClipping(base, noise, 2.0, 3)


@pytest.mark.usefixtures("task")
def test_client_dp_takes_partial_replies_with_noise_per_tensor_holders() -> None:
    from edgefleet.flower.strategies import holder_counts

    grid = LoopbackGrid({11: _device({}, 1, []), 12: _device({}, 1, []), 13: _device({}, 1, [])})
    quiet = _dp_strategy(0.0)
    msgs = list(quiet.configure_train(1, to_record(GLOBAL), ConfigRecord(), grid))
    cfg = msgs[0].content.config_records[Record.CONFIG]
    assert cfg[TrainConfig.PARTIAL_UPDATES] and cfg["clipping_norm"] == 2.0
    merged, _ = quiet.aggregate_train(1, _dp_replies(msgs))
    assert merged is not None
    plain = _partial_fedavg()
    for k in GLOBAL:  # no noise: PartialFedAvg exactly
        np.testing.assert_allclose(arrays_of(merged)[k], plain[k], rtol=1e-6, err_msg=k)

    noisy = _dp_strategy(0.5)
    msgs = list(noisy.configure_train(1, to_record(GLOBAL), ConfigRecord(), grid))
    replies = _dp_replies(msgs)
    holders = holder_counts(replies)
    assert holders == {"conv.weight": 1, "conv.bias": 2, "head.weight": 3, "head.bias": 3}
    np.random.seed(3)
    merged, _ = noisy.aggregate_train(1, replies)
    assert merged is not None
    out = arrays_of(merged)
    np.random.seed(3)  # the same draws, in the record's order: noise z*C/k per tensor
    for k in GLOBAL:
        if k not in holders:  # nobody trained it: released as it was, without noise
            np.testing.assert_array_equal(out[k], GLOBAL[k])
            continue
        noise = np.random.normal(0, 0.5 * 2.0 / holders[k], plain[k].shape)
        want = plain[k] + np.asarray(noise, np.float32)
        np.testing.assert_allclose(out[k], want, rtol=1e-5, atol=1e-6, err_msg=k)
