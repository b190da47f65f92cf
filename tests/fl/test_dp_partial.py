"""Server-side DP over light-scope (partial) replies: PartialServerSideFixedClipping.

Real numpy and Flower Messages through the strategy's ``configure_train``/``aggregate_train``,
as the round loop calls them; Flower's own wrapper is the reference for whole models.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from flwr.supercore.task_identity import TaskIdentity

from edgefleet.fl.contract import Metric, Record, TrainConfig
from edgefleet.flower.run_settings import RunSettings
from edgefleet.flower.serverapp import _strategy
from edgefleet.flower.strategies import (
    PartialFedAvg,
    PartialServerSideFixedClipping,
    arrays_of,
    clip_partial_reply,
    to_record,
)

Arrays = dict[str, np.ndarray[Any, Any]]
CLIP = 2.0
KEYS: dict[str, Any] = dict(weighted_by_key=Metric.NUM_EXAMPLES, arrayrecord_key=Record.ARRAYS,
            configrecord_key=Record.CONFIG)  # fmt: skip

GLOBAL: Arrays = {
    "conv.weight": np.full((4, 3), 0.5, np.float32),
    "conv.bias": np.zeros(4, np.float32),
    "head.weight": np.full((2, 4), -0.25, np.float32),
    "head.bias": np.zeros(2, np.float32),
    "bn.running_mean": np.full(3, 0.1, np.float32),  # nobody trains it
    "bn.num_batches_tracked": np.asarray(4.0, np.float32),  # 0-d, in every whole model
}
COUNTER = "bn.num_batches_tracked"


class _Nodes:
    """Just enough of a Grid for a strategy's sampling."""

    def __init__(self, nodes: Iterable[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _grid(nodes: Iterable[int]) -> Grid:
    return cast(Grid, _Nodes(nodes))


@pytest.fixture(autouse=True)
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity (Flower sets it in the ServerApp process)."""
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _moved(rng: np.random.Generator, scale: float, *names: str) -> Arrays:
    return {
        k: GLOBAL[k] + np.asarray(rng.normal(0, scale, GLOBAL[k].shape), np.float32) for k in names
    }


def _light_replies(scale: float = 1.0) -> list[Arrays]:
    """A full device, a TinyTL one (biases + head), a head-only one: updates well over C."""
    rng = np.random.default_rng(7)
    return [
        _moved(rng, scale, *[k for k in GLOBAL if k != "bn.running_mean"]),
        _moved(rng, scale, "conv.bias", "head.weight", "head.bias"),
        _moved(rng, scale, "head.weight", "head.bias"),
    ]


def _dp(noise: float, n: int = 3, base: Any = None) -> PartialServerSideFixedClipping:
    inner = base if base is not None else PartialFedAvg(min_train_nodes=n, **KEYS)
    return PartialServerSideFixedClipping(inner, noise, CLIP, n)


def _round(
    strategy: Any, trained: list[Arrays], model: Arrays = GLOBAL
) -> tuple[Arrays, list[Message]]:
    """One round: configure, reply with ``trained`` (equal weights), aggregate."""
    grid = _grid(range(11, 11 + len(trained)))
    msgs = list(strategy.configure_train(1, to_record(model), ConfigRecord(), grid))
    replies = [
        Message(RecordDict({Record.ARRAYS: to_record(t),
                            Record.METRICS: MetricRecord({Metric.NUM_EXAMPLES: 10})}), reply_to=m)
        for m, t in zip(msgs, trained, strict=True)
    ]  # fmt: skip
    merged, _ = strategy.aggregate_train(1, replies)
    assert merged is not None
    return arrays_of(merged), msgs


def _norm(arrays: Arrays) -> float:
    return float(
        np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in arrays.values()))
    )


def test_each_reply_is_clipped_to_c_over_the_tensors_it_sent_and_stays_partial() -> None:
    for trained in _light_replies():  # a counter's delta is 0 (test_counters_*)
        delta = {k: v - GLOBAL[k] if k != COUNTER else 0 * v for k, v in trained.items()}
        assert _norm(delta) > 1.2 * CLIP  # the clip has work to do
        out = arrays_of(clip_partial_reply(to_record(trained), GLOBAL, CLIP))
        assert list(out) == list(trained)  # untrained tensors are not filled in
        clipped = {k: out[k] - GLOBAL[k] for k in out}
        assert _norm(clipped) == pytest.approx(CLIP, rel=1e-5)
        for k in out:  # scaled, not re-directed: one factor for every tensor of the reply
            np.testing.assert_allclose(clipped[k], delta[k] * CLIP / _norm(delta), atol=1e-6)
    small = _light_replies(scale=0.01)[2]
    out = arrays_of(clip_partial_reply(to_record(small), GLOBAL, CLIP))
    for k in small:  # under the norm: unchanged
        np.testing.assert_allclose(out[k], small[k], rtol=1e-6)


def test_without_noise_each_tensor_is_the_mean_of_its_holders_clipped_replies() -> None:
    trained = _light_replies()
    out, msgs = _round(_dp(0.0), trained)
    assert all(m.content.config_records[Record.CONFIG][TrainConfig.PARTIAL_UPDATES] for m in msgs)
    clipped = [arrays_of(clip_partial_reply(to_record(t), GLOBAL, CLIP)) for t in trained]
    for k in GLOBAL:
        held = [c[k] for c in clipped if k in c]
        want = np.mean(held, axis=0) if held else GLOBAL[k]
        np.testing.assert_allclose(out[k], want, rtol=1e-5, atol=1e-6, err_msg=k)
    # conv.weight: the full device's clipped tensor, not pulled back by light devices' copies
    np.testing.assert_allclose(out["conv.weight"], clipped[0]["conv.weight"], rtol=1e-6)
    np.testing.assert_array_equal(out["bn.running_mean"], GLOBAL["bn.running_mean"])


def test_noise_per_tensor_has_std_z_c_over_its_holders_and_spares_untrained_ones() -> None:
    big: Arrays = {"a": np.zeros(6000, np.float32), "b": np.zeros(6000, np.float32),
                   "c": np.zeros(6000, np.float32), "d": np.ones(50, np.float32)}  # fmt: skip
    # unchanged tensors (delta 0, so the mean is the global model): what remains is the noise
    held = [("a", "b", "c"), ("b", "c"), ("c",), ("c",)]
    trained = [{k: big[k] for k in names} for names in held]
    noise = 0.8
    np.random.seed(5)
    out, _ = _round(_dp(noise, n=4), trained, model=big)
    holders = {"a": 1, "b": 2, "c": 4}
    for k, h in holders.items():
        assert float(np.std(out[k])) == pytest.approx(noise * CLIP / h, rel=0.05), k
        assert abs(float(np.mean(out[k]))) < 0.1 * noise * CLIP / h, k
    np.testing.assert_array_equal(out["d"], big["d"])  # nobody trained it: released as it was


def _flower(noise: float, n: int) -> DifferentialPrivacyServerSideFixedClipping:
    return DifferentialPrivacyServerSideFixedClipping(
        FedAvg(min_train_nodes=n, **KEYS), noise, CLIP, n
    )


def test_whole_replies_get_flowers_own_clipping_and_noise() -> None:
    rng = np.random.default_rng(11)
    model = {k: v for k, v in GLOBAL.items() if v.ndim}  # Flower leaves a 0-d delta unclipped
    trained = [_moved(rng, 1.0, *model) for _ in range(3)]
    trained[2] = _moved(rng, 0.01, *model)  # one under the clipping norm
    np.random.seed(9)
    mine, _ = _round(_dp(0.3), trained, model)
    np.random.seed(9)
    theirs, _ = _round(_flower(0.3, 3), trained, model)
    assert list(mine) == list(theirs) == list(model)
    for k in model:
        np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_a_0d_tensor_is_clipped_with_the_rest_where_flower_releases_its_delta() -> None:
    model = {"w": np.zeros(2, np.float32), "steps": np.asarray(0.0, np.float32)}
    trained = [{"w": np.full(2, 3.0, np.float32), "steps": np.asarray(50.0, np.float32)}] * 2
    mine, _ = _round(_dp(0.0, n=2), trained, model)
    theirs, _ = _round(_flower(0.0, 2), trained, model)
    assert _norm(mine) == pytest.approx(CLIP, rel=1e-5)
    np.testing.assert_allclose(theirs["steps"], 50.0)  # Flower's: unclipped
    np.testing.assert_allclose(theirs["w"], mine["w"], rtol=1e-5)  # the rest: the same


def test_an_unchanged_reply_passes_where_flowers_clipping_divides_by_zero() -> None:
    same = {k: v.copy() for k, v in GLOBAL.items()}
    with pytest.raises(ZeroDivisionError):  # Flower's wrapper, on the same round
        _round(_flower(0.0, 2), [same, same])
    out, _ = _round(_dp(0.0, n=2), [same, {"head.bias": GLOBAL["head.bias"]}])
    for k in GLOBAL:
        np.testing.assert_array_equal(out[k], GLOBAL[k])


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ({"lora.A": np.zeros(2, np.float32)}, r"a reply holds tensors the model does not have: \['lora.A'\]"),
        ({"head.bias": np.zeros(3, np.float32)}, r"a reply's 'head.bias' is \(3,\), the model's is \(2,\)"),
    ],
)  # fmt: skip
def test_a_reply_that_does_not_fit_the_model_is_refused_in_one_line(
    reply: Arrays, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _round(_dp(0.0, n=2), [_light_replies()[2], reply])


def test_an_error_reply_skips_the_round_as_flowers_wrapper_does() -> None:
    strategy = _dp(0.0, n=2)
    msgs = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), _grid([11, 12])))
    ok = Message(RecordDict({Record.ARRAYS: to_record(_light_replies()[2]),
                             Record.METRICS: MetricRecord({Metric.NUM_EXAMPLES: 1})}),
                 reply_to=msgs[0])  # fmt: skip
    failed = Message(Error(0, "out of memory"), reply_to=msgs[1])
    assert strategy.aggregate_train(1, [ok, failed]) == (None, None)


def test_server_fixed_runs_take_partial_replies() -> None:
    for strategy in ("fedavg", "fedprox"):
        settings = RunSettings(strategy=strategy, dp="server-fixed", dp_noise=0.5, dp_clip=CLIP)
        built = _strategy(settings, {}, 3)
        assert isinstance(built, PartialServerSideFixedClipping)
        assert isinstance(built.strategy, PartialFedAvg)
        assert (built.noise_multiplier, built.clipping_norm, built.num_sampled_clients) == (
            0.5, CLIP, 3,
        )  # fmt: skip
        msgs = list(built.configure_train(1, to_record(GLOBAL), ConfigRecord(), _grid([1, 2, 3])))
        cfg = msgs[0].content.config_records[Record.CONFIG]
        assert cfg[TrainConfig.PARTIAL_UPDATES] is True
        assert "clipping_norm" not in cfg  # the server clips: devices do not
        assert isinstance(msgs[0].content.array_records[Record.ARRAYS], ArrayRecord)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_server_dp_round_takes_a_light_devices_partial_reply(tmp_path: Path) -> None:
    """Our round loop and the agent's ClientApp (in-process Grid): 4 kws devices, one whose
    budget fits a light scope only, under ``--dp server-fixed``: it trains a light scope ..."""
    from edgefleet.flower import model as fl_model
    from tests.fl.light_dp_round import run_light_dp_round

    done = run_light_dp_round(tmp_path, "server-fixed")
    r, settings = done.round, done.settings
    whole = fl_model.initial_params(settings.arch, override=settings.arch_config)
    one = sum(len(Array(v).data) for v in whole.values())
    assert r["bytes_up"] < 4 * one - one // 2  # ... and sent those tensors only
