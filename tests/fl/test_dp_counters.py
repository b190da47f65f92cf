"""DP does not clip, noise or release BatchNorm's integer counters (``num_batches_tracked``).

The rule (:mod:`edgefleet.fl.counters`): under ``client-fixed`` and ``server-fixed`` a reply's
counters are the global model's, so a device's batch count neither shrinks its real update
through the clipping norm nor leaks; the release keeps the global counters. Real Flower
messages, Flower's own ``fixedclipping_mod`` and the strategies the ServerApp builds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from edgefleet.agent.fl.dp_clip import clip_when_asked
from edgefleet.fl.contract import Metric, Record, TrainConfig
from edgefleet.fl.counters import counter_keys, is_counter, is_variance
from edgefleet.flower.strategies import (
    PartialClientSideFixedClipping,
    PartialFedAvg,
    PartialServerSideFixedClipping,
    arrays_of,
    clip_partial_reply,
    noise_per_tensor,
    to_record,
)

Arrays = dict[str, np.ndarray[Any, Any]]
CLIP = 5.0
COUNTER = "bn.num_batches_tracked"
MODEL: Arrays = {
    "conv.weight": np.full((3, 4), 0.5, np.float32),
    "head.bias": np.zeros(4, np.float32),
    COUNTER: np.asarray(4.0, np.float32),  # as on the wire: a float32 0-d tensor
}
#: a float update of norm 2.5 (under CLIP) on conv.weight
STEP = np.asarray(np.full((3, 4), 2.5 / np.sqrt(12)), np.float32)
KEYS: dict[str, Any] = dict(weighted_by_key=Metric.NUM_EXAMPLES, arrayrecord_key=Record.ARRAYS,
            configrecord_key=Record.CONFIG)  # fmt: skip


@pytest.fixture(autouse=True)
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity (Flower sets it in the ServerApp process)."""
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _trained(batches: float, *names: str) -> Arrays:
    """What a device trained: conv.weight moved by STEP, the counter by ``batches``."""
    out: Arrays = {"conv.weight": MODEL["conv.weight"] + STEP, "head.bias": MODEL["head.bias"] + 0,
                   COUNTER: np.asarray(MODEL[COUNTER] + batches, np.float32)}  # fmt: skip
    return {k: out[k] for k in names or out}


class _Nodes:
    def __init__(self, n: int) -> None:
        self.nodes = list(range(11, 11 + n))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _round(strategy: Any, trained: list[Arrays], weights: list[int] | None = None) -> Arrays:
    """One round through the strategy: configure, reply with ``trained``, aggregate."""
    grid = cast(Grid, _Nodes(len(trained)))
    msgs = list(strategy.configure_train(1, to_record(MODEL), ConfigRecord(), grid))
    weights = weights or [10] * len(trained)
    replies = [
        Message(RecordDict({Record.ARRAYS: to_record(t),
                            Record.METRICS: MetricRecord({Metric.NUM_EXAMPLES: w})}), reply_to=m)
        for m, t, w in zip(msgs, trained, weights, strict=True)
    ]  # fmt: skip
    merged, _ = strategy.aggregate_train(1, replies)
    assert merged is not None
    return arrays_of(merged)


def _server(noise: float, n: int) -> PartialServerSideFixedClipping:
    return PartialServerSideFixedClipping(PartialFedAvg(min_train_nodes=n, **KEYS), noise, CLIP, n)


def _client(noise: float, n: int) -> PartialClientSideFixedClipping:
    return PartialClientSideFixedClipping(PartialFedAvg(min_train_nodes=n, **KEYS), noise, CLIP, n)


# --- the rule -------------------------------------------------------------------------------


def test_the_rule_finds_exactly_the_zoos_integer_tensors_which_no_batchnorm_reads() -> None:
    import torch

    from edgefleet.flower import model as fl_model
    from edgefleet.zoo import ARCHITECTURES, ArchitectureSpec, build_model

    for arch in ARCHITECTURES:
        spec = ArchitectureSpec(arch, fl_model.arch_config(arch, 1.0), fl_model.INPUT_SHAPE)
        model = build_model(spec)
        state = model.state_dict()
        integers = [k for k, v in state.items() if not v.is_floating_point()]
        wire = {k: v.numpy().astype(np.float32) for k, v in state.items()}  # as Flower sends
        assert counter_keys(wire.items()) == integers, arch
        assert counter_keys((k, v.numpy()) for k, v in state.items()) == integers, arch
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert len(integers) == len(norms) and all(m.momentum is not None for m in norms), arch
    assert is_counter("steps", np.zeros(2, np.int64)) and not is_counter("w", np.zeros(2))
    assert is_counter("steps", Array(np.asarray(3, np.int64)))  # a Flower Array's dtype name

    def bn_after_a_step(momentum: float | None, counter: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        bn = torch.nn.BatchNorm2d(3, momentum=momentum)
        assert bn.num_batches_tracked is not None
        assert bn.running_mean is not None and bn.running_var is not None
        bn.num_batches_tracked.fill_(counter)
        out = bn(torch.randn(4, 3, 2, 2))
        return [out, bn.running_mean.clone(), bn.running_var.clone()]

    for a, b in zip(bn_after_a_step(0.1, 0), bn_after_a_step(0.1, 10**6), strict=True):
        assert torch.equal(a, b)  # with a momentum (the zoo's) the counter is never read
    assert not torch.equal(bn_after_a_step(None, 0)[1], bn_after_a_step(None, 10**6)[1])


# --- server-fixed -------------------------------------------------------------------------------


def test_server_dp_a_counter_change_neither_shrinks_the_update_nor_is_released() -> None:
    reply = _trained(60.0)  # 60 batches: the counter alone would be 24x the clipping norm
    out = arrays_of(clip_partial_reply(to_record(reply), MODEL, CLIP))
    np.testing.assert_allclose(out["conv.weight"] - MODEL["conv.weight"], STEP, rtol=1e-6)
    np.testing.assert_array_equal(out[COUNTER], MODEL[COUNTER])
    # two full devices (different batch counts, different example counts) and a light one
    merged = _round(_server(0.0, 3), [reply, _trained(7.0), _trained(0, "head.bias")], [3, 5, 9])
    np.testing.assert_allclose(merged["conv.weight"], MODEL["conv.weight"] + STEP, rtol=1e-6)
    np.testing.assert_array_equal(merged[COUNTER], MODEL[COUNTER])


def test_no_noise_on_counters_and_the_release_keeps_the_global_ones() -> None:
    big = {"w": np.zeros(4000, np.float32), COUNTER: np.asarray(7.0, np.float32),
           "steps": np.asarray([3, 9], np.int64)}  # fmt: skip
    np.random.seed(3)
    noisy = arrays_of(noise_per_tensor(to_record(big), {k: 2 for k in big}, zc=1.0))
    assert float(np.std(noisy["w"])) == pytest.approx(0.5, rel=0.05)
    np.testing.assert_array_equal(noisy[COUNTER], 7.0)
    np.testing.assert_array_equal(noisy["steps"], [3, 9])
    np.random.seed(3)
    merged = _round(_server(0.8, 3), [_trained(60.0), _trained(9.0), _trained(0, "head.bias")])
    assert float(np.std(merged["conv.weight"] - MODEL["conv.weight"] - STEP)) > 0.1  # noised
    np.testing.assert_array_equal(merged[COUNTER], MODEL[COUNTER])


def test_noise_never_releases_a_negative_running_variance() -> None:
    """A near-zero variance noised below ``-eps`` made BatchNorm divide by the root of a
    negative number (NaN everywhere after it); weights and means may still go negative."""
    tiny = np.full(4000, 1e-4, np.float32)
    model = {"bn.running_var": tiny, "bn.running_mean": tiny.copy(), "conv.weight": tiny.copy()}
    np.random.seed(5)
    noisy = arrays_of(noise_per_tensor(to_record(model), {k: 1 for k in model}, zc=0.1))
    assert float(noisy["bn.running_var"].min()) == 0.0
    assert int((noisy["bn.running_var"] > 0).sum()) > 1000  # the rest keep their noised value
    assert noisy["bn.running_var"].dtype == np.float32
    assert float(noisy["bn.running_mean"].min()) < 0 and float(noisy["conv.weight"].min()) < 0
    assert is_variance("layer1.0.bn1.running_var") and not is_variance("running_mean")

    import torch

    bn = torch.nn.BatchNorm1d(4000).eval()
    bn.running_var = torch.from_numpy(noisy["bn.running_var"].copy())
    assert torch.isfinite(bn(torch.randn(2, 4000))).all()
    bn.running_var = torch.from_numpy(tiny - 0.05)  # what the noise gave before the floor
    assert not torch.isfinite(bn(torch.randn(2, 4000))).all()


# --- client-fixed -------------------------------------------------------------------------------


def _device_round(reply: Arrays, partial: bool) -> Arrays:
    """The device's DP mod around a handler that replies ``reply``; what leaves the device."""
    config = ConfigRecord({"clipping_norm": CLIP, TrainConfig.PARTIAL_UPDATES: partial})
    content = RecordDict({Record.ARRAYS: to_record(MODEL), Record.CONFIG: config})
    msg = Message(content, dst_node_id=11, message_type="train")

    def handler(m: Message, _ctx: Context) -> Message:
        return Message(RecordDict({Record.ARRAYS: to_record(reply)}), reply_to=m)

    ctx = Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={})
    out = clip_when_asked(msg, ctx, handler)
    assert not out.has_error(), out.error
    return arrays_of(out.content.array_records[Record.ARRAYS])


def test_client_dp_sends_the_received_counter_and_the_update_unshrunk() -> None:
    sent = _device_round(_trained(60.0), partial=False)  # a whole reply: counter as received
    assert list(sent) == list(MODEL)
    np.testing.assert_allclose(sent["conv.weight"] - MODEL["conv.weight"], STEP, rtol=1e-6)
    np.testing.assert_array_equal(sent[COUNTER], MODEL[COUNTER])
    # a partial reply leaves the counter out (the server keeps the global one)
    sent = _device_round(_trained(60.0, "conv.weight", COUNTER), partial=True)
    assert list(sent) == ["conv.weight"]
    np.testing.assert_allclose(sent["conv.weight"] - MODEL["conv.weight"], STEP, rtol=1e-6)
    # an update over the norm is still clipped to it
    sent = _device_round({**_trained(60.0), "head.bias": np.full(4, 5.0, np.float32)}, False)
    update = [sent[k] - MODEL[k] for k in ("conv.weight", "head.bias")]
    assert float(np.sqrt(sum(np.sum(u.astype(np.float64) ** 2) for u in update))) == (
        pytest.approx(CLIP, rel=1e-5)
    )


def test_client_dp_release_keeps_the_global_counters_and_noises_the_weights() -> None:
    np.random.seed(4)  # a device that still sent its own counter does not move the release
    merged = _round(_client(0.8, 3), [_trained(60.0), _trained(0.0), _trained(0, "head.bias")])
    np.testing.assert_array_equal(merged[COUNTER], MODEL[COUNTER])
    assert float(np.std(merged["conv.weight"] - MODEL["conv.weight"])) > 0.1
    quiet = _round(_client(0.0, 2), [_trained(0.0), _trained(0.0)])
    np.testing.assert_allclose(quiet["conv.weight"], MODEL["conv.weight"] + STEP, rtol=1e-6)
    np.testing.assert_array_equal(quiet[COUNTER], MODEL[COUNTER])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_client_dp_round_releases_trained_weights_and_the_initial_counters(
    tmp_path: Path,
) -> None:
    """Our round loop and the agent's ClientApp with its mods (in-process Grid): 4 kws devices,
    one on a light scope, ``--dp client-fixed``; the released model's counters are the initial
    ones though every full device ran batches."""
    from edgefleet.flower import model as fl_model
    from tests.fl.light_dp_round import run_light_dp_round

    settings = run_light_dp_round(tmp_path, "client-fixed").settings
    start = fl_model.initial_params(settings.arch, override=settings.arch_config)
    final = fl_model.load_params(Path(settings.out_dir) / "final.npz")
    counters = counter_keys(start.items())
    assert len(counters) == 9
    for k in start:
        if k in counters:
            np.testing.assert_array_equal(final[k], start[k], err_msg=k)
        elif k.endswith(".weight"):
            assert not np.array_equal(final[k], start[k]), k  # trained and noised
