"""FedBuff: the buffer's aggregation rule alone, then a real asynchronous run on loopback.

The real run (3 SuperNodes, one of them slowed by ``sim-delay``, top-k updates) shows the
mechanisms end to end: aggregation every K arrivals without waiting for the slow device, stale
updates discounted or dropped, the device's error-feedback residual kept between its rounds,
bytes on the wire recorded per aggregation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from edgefleet.devtools.fl_local import LocalFederation, pretrain_biased, wait_progress
from edgefleet.fl.contract import Node
from edgefleet.flower.fedbuff import Buffer, staleness_weight
from edgefleet.flower.serverapp import RunSettings


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _msg() -> Message:
    return Message(RecordDict(), dst_node_id=1, message_type="train")


@pytest.mark.usefixtures("task")
def test_buffer_weights_by_staleness_drops_the_too_stale_and_merges_slices() -> None:
    g = {"w": np.zeros((4, 2), np.float32)}
    buf = Buffer(g, size=2, max_staleness=1)
    assert buf.offer(0, {"w": np.ones((4, 2), np.float32)}, 10, _msg())
    assert not buf.full
    assert buf.offer(0, {"w": np.full((2, 2), 3.0, np.float32)}, 10, _msg())  # a half-width slice
    assert buf.full
    buf.aggregate()
    assert buf.version == 1
    # rows 0-1: mean of 1 and 3; rows 2-3: only the full-width update holds them
    np.testing.assert_allclose(buf.params["w"], [[2, 2], [2, 2], [1, 1], [1, 1]])

    # version 1 now: updates from version 0 have staleness 1 and count 1/sqrt(2) of a step,
    # even when the whole buffer is that stale (a normalised weight would cancel the discount)
    assert buf.offer(0, {"w": np.ones((4, 2), np.float32)}, 10, _msg())
    assert buf.offer(0, {"w": np.ones((4, 2), np.float32)}, 30, _msg())
    used = buf.aggregate()
    assert [u.staleness for u in used] == [1, 1]
    np.testing.assert_allclose(buf.params["w"][2:], 1.0 + staleness_weight(1), rtol=1e-6)
    # version 2: version 0 is beyond max-staleness 1, dropped and counted
    assert not buf.offer(0, {"w": np.ones((4, 2), np.float32)}, 10, _msg())
    assert buf.dropped == 1 and not buf.pending
    with pytest.raises(KeyError):
        buf.snapshot(0)  # no longer kept: nothing trained on it can count


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"strategy": "fedbuff", "buffer": 0}, "buffer must be >= 1"),
        ({"strategy": "fedbuff", "max-staleness": -1}, "max-staleness >= 0"),
        ({"strategy": "fedbuff", "dp": "server-fixed"}, "not fedbuff"),
        ({"update-codec": "q3"}, "update codec must be one of"),
        ({"update-codec": "q8", "dp": "client-fixed"}, "client-fixed needs update-codec none"),
        ({"secure-agg": True, "strategy": "fedbuff"}, "secure-agg runs fedavg/fedprox"),
        ({"secure-agg": True, "update-codec": "q4"}, "secure-agg runs fedavg/fedprox"),
    ],
)
def test_bad_settings_fail_before_any_round(cfg: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RunSettings.from_run_config(cfg)


@pytest.mark.timeout(240)  # ~15 s on an idle machine; minutes when the box is saturated
def test_fedbuff_aggregates_the_fast_device_alone_with_q8_updates(tmp_path: Path) -> None:
    with LocalFederation(
        tmp_path / "fed", num_nodes=2, seed=3, node_facts={1: {Node.SIM_DELAY: 600.0}}
    ) as fed:
        out = fed.run(
            {"num-rounds": 2, "min-devices": 2, "strategy": "fedbuff", "buffer": 1,
             "max-staleness": 0, "update-codec": "q8", "final-evaluate": False,
             "round-timeout": 60.0},
        )  # fmt: skip
        doc = wait_progress(out, timeout=220)
    assert doc["state"] == "succeeded", doc.get("reason")
    rounds = doc["rounds"]
    # two versions from the fast device while the slow one (600 s) still trains on version 0
    assert [r["participants"] for r in rounds] == [["sim-000"], ["sim-000"]]
    assert [r["staleness"] for r in rounds] == [[0], [0]]
    assert all(r["codec"] == "q8" and 0 < r["bytes_up"] < r["bytes_down"] / 3 for r in rounds)
    # the device kept its error-feedback residual between its two messages
    assert rounds[0]["codec_residual"] == 0.0 < rounds[1]["codec_residual"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fedbuff_does_not_wait_for_the_slow_device(tmp_path: Path) -> None:
    with LocalFederation(
        tmp_path / "fed", num_nodes=3, seed=3, alpha=5.0, node_facts={2: {Node.SIM_DELAY: 6.0}}
    ) as fed:
        init = pretrain_biased("mlp", tmp_path / "init.npz")
        out = fed.run(
            {"num-rounds": 4, "min-devices": 2, "init-path": str(init), "strategy": "fedbuff",
             "buffer": 2, "max-staleness": 3, "update-codec": "topk:0.2",
             "final-evaluate": False, "round-timeout": 60.0},
        )  # fmt: skip
        doc = wait_progress(out, timeout=250)
    assert doc["state"] == "succeeded", doc.get("reason")
    rounds = doc["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    # the first aggregations are made of the fast devices' updates: nobody waited for sim-002
    assert "sim-002" not in rounds[0]["participants"]
    assert all(len(r["participants"]) == 2 for r in rounds)
    assert any(s > 0 for r in rounds for s in r["staleness"])  # updates on older versions count
    assert all(s <= 3 for r in rounds for s in r["staleness"])
    dense = sum(v.nbytes for v in np.load(init).values())
    assert all(r["codec"] == "topk:0.2" for r in rounds)
    assert all(0 < r["bytes_up"] < 0.5 * dense * len(r["participants"]) for r in rounds)
    # the device kept its residual between messages: a later update carries some in
    assert rounds[0]["codec_residual"] == 0.0
    assert rounds[-1]["codec_residual"] > 0.0
    assert doc["final"]["test_acc"] > doc["initial"]["test_acc"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "fedbuff", "--buffer", "0"], "--buffer must be >= 1, got 0"),
        (["--strategy", "fedbuff", "--max-staleness", "-1"], "--max-staleness must be >= 0"),
        (["--update-codec", "q5"], "--update-codec: update codec must be one of"),
        (["--update-codec", "topk:2"], "topk needs a fraction in (0, 1]"),
        (["--strategy", "fedbuff", "--dp", "server-fixed"], "not --strategy fedbuff"),
        (["--dp", "client-fixed", "--update-codec", "q8"], "needs --update-codec none"),
        (["--secure-agg", "--strategy", "heterofl"], "--secure-agg runs fedavg/fedprox"),
    ],
)
def test_train_start_refuses_bad_fedbuff_and_codec_options(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from typer.testing import CliRunner

    from edgefleet.cli.train_cmds import train_app

    runs = tmp_path / "runs"
    res = CliRunner().invoke(
        train_app, ["start", "mlp", "--local", "2", "--runs-dir", str(runs), *args]
    )
    assert res.exit_code == 2, res.output
    assert message in res.stderr and res.stderr.count("\n") == 1
    assert not runs.exists()


@pytest.mark.usefixtures("task")
def test_an_encoded_reply_is_restored_to_the_model_it_stands_for() -> None:
    from flwr.app import ConfigRecord, Context, MetricRecord

    from edgefleet.agent.fl.clientapp import RESIDUAL_RECORD, _encode_update
    from edgefleet.fl.contract import Metric, Record, TrainConfig
    from edgefleet.fl.update_codec import parse_codec
    from edgefleet.flower.strategies import arrays_of, to_record
    from edgefleet.flower.updates import restore, wire_bytes

    rng = np.random.default_rng(0)
    sent_params = {"w": rng.normal(size=(64, 64)).astype(np.float32)}
    trained = {"w": sent_params["w"] + 0.01 * rng.normal(size=(64, 64)).astype(np.float32)}
    sent = Message(
        RecordDict({Record.ARRAYS: to_record(sent_params), Record.CONFIG: ConfigRecord()}),
        dst_node_id=1, message_type="train",
    )  # fmt: skip
    sent.metadata.__dict__["_message_id"] = "m1"  # what Grid.push_messages sets
    context = Context(1, 2, {}, RecordDict(), {})
    cfg = ConfigRecord({TrainConfig.UPDATE_CODEC: "q4"})
    encoded, carried = _encode_update(sent_params, trained, cfg, context)
    assert carried == 0.0 and RESIDUAL_RECORD in context.state.array_records  # kept on device
    _, carried_next = _encode_update(sent_params, trained, cfg, context)
    assert carried_next > 0.0  # the next update carries what this one lost

    metrics = MetricRecord({Metric.NUM_EXAMPLES: 5})
    reply = Message(RecordDict({Record.ARRAYS: encoded, Record.METRICS: metrics}), reply_to=sent)
    assert wire_bytes([reply]) < wire_bytes([sent]) / 6  # 4 bits instead of 32
    (restored,) = restore([sent], [reply], parse_codec("q4"))
    model = arrays_of(restored.content.array_records[Record.ARRAYS])
    step = float(np.ptp(trained["w"] - sent_params["w"])) / 15
    assert np.abs(model["w"] - trained["w"]).max() <= step / 2 + 1e-5
    assert restored.content.metric_records[Record.METRICS][Metric.NUM_EXAMPLES] == 5
