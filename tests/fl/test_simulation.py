"""Flower's Simulation Engine with our apps: virtual devices' profiles, batteries, groups and
node context (cheap, no Ray), option validation, and one small Ray run (slow)."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from edgefleet.catalog import get_profile
from edgefleet.cli.main import app as cli
from edgefleet.devtools.fl_sim import (
    FLEET_FILE,
    SimOptions,
    SimulatedClientApp,
    parse_mix,
    plan_fleet,
    write_fleet,
)
from edgefleet.fl.contract import Metric, Node, Record, TrainConfig
from edgefleet.flower.strategies import to_record


def test_the_mix_is_dealt_in_exact_shares_with_batteries_only_where_a_profile_has_one() -> None:
    opts = SimOptions(devices=40, mix="rpi4:3,esp32-s3:1", groups=4, seed=3)
    fleet = plan_fleet(opts)
    assert collections.Counter(d.profile for d in fleet) == {"rpi4": 30, "esp32-s3": 10}
    assert collections.Counter(d.group for d in fleet) == dict.fromkeys(range(4), 10)
    for d in fleet:
        assert d.ram == get_profile(d.profile).ram_bytes
        if d.profile == "esp32-s3":  # battery_mah > 0 in the catalog
            assert d.battery is not None and 5.0 <= d.battery <= 100.0
        else:  # a Pi is mains-powered: no battery fact, selection treats it as full
            assert d.battery is None
    assert len({d.device for d in fleet}) == 40
    assert plan_fleet(opts) == fleet  # a pure function of the options
    assert plan_fleet(SimOptions(devices=40, mix="rpi4:3,esp32-s3:1", groups=4)) != fleet


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity (Flower sets it in the ServerApp process)."""
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _context(partition: int, devices: int) -> Context:
    """What Flower's Simulation Engine gives a virtual node: its partition and nothing else."""
    cfg = {Node.PARTITION_ID: partition, Node.NUM_PARTITIONS: devices}
    return Context(1, 1000 + partition, cfg, RecordDict(), {})  # type: ignore[arg-type]


@pytest.mark.usefixtures("task")
def test_a_virtual_node_answers_as_its_planned_device_through_the_agents_clientapp(
    tmp_path: Path,
) -> None:
    opts = SimOptions(devices=6, groups=2, mix="phone-budget:1,stm32h743:1", samples=20)
    fleet, _ = write_fleet(tmp_path, opts)
    app = SimulatedClientApp(str(tmp_path / FLEET_FILE))
    for dev in fleet:
        query = Message(RecordDict(), dst_node_id=1000 + dev.partition, message_type="query")
        reply = app(query, _context(dev.partition, opts.devices))
        facts = dict(reply.content.config_records[Record.FACTS])
        assert facts[Node.DEVICE_ID] == dev.device
        assert facts[Node.PROFILE] == dev.profile
        assert facts[Node.RAM_BYTES] == dev.ram
        assert facts.get(Node.BATTERY) == dev.battery
        assert f"group=g{dev.group:03d}" in str(facts[Node.LABELS])

    # a train message runs on the device's own shard (its rows, under its RAM budget)
    dev = fleet[0]
    rng = np.random.default_rng(0)  # the zoo mlp's tensor names, small: no torch here
    params = {
        "features.1.weight": (rng.normal(size=(16, 64)) * 0.1).astype(np.float32),
        "features.1.bias": np.zeros(16, np.float32),
        "classifier.weight": (rng.normal(size=(10, 16)) * 0.1).astype(np.float32),
        "classifier.bias": np.zeros(10, np.float32),
    }
    cfg = ConfigRecord({TrainConfig.ARCH: "mlp", TrainConfig.LOCAL_EPOCHS: 1})
    content = RecordDict({Record.ARRAYS: to_record(params), Record.CONFIG: cfg})
    train = Message(content, dst_node_id=1000, message_type=MessageType.TRAIN)
    metrics = app(train, _context(dev.partition, opts.devices)).content.metric_records
    shard = np.load(tmp_path / "data" / f"{dev.device}.npz")
    assert metrics[Record.METRICS][Metric.NUM_EXAMPLES] == len(shard["y_train"]) == 20
    assert metrics[Record.METRICS][Metric.EVAL_EXAMPLES] == len(shard["y_eval"]) == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"devices": 0}, "--devices must be 1..10000"),
        ({"devices": 10, "groups": 11}, "--groups must be 1..10"),
        ({"fraction": 0.0}, "--fraction must be in (0, 1]"),
        ({"mix": "rpi4:2,toaster"}, "toaster"),
        ({"mix": "rpi4:x"}, "weight of 'rpi4' is not a number"),
        ({"mix": "rpi4:0"}, "must be > 0"),
        ({"select": "battery >>= 3"}, "expected a value"),
        ({"strategy": "fedsgd"}, "strategy must be one of"),
        ({"cpus": 4096}, "--cpus must be"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=None) as err:
        SimOptions(**options).check()  # type: ignore[arg-type]
    assert message in str(err.value)


def test_cli_refuses_bad_input_in_one_line_with_exit_2() -> None:
    res = CliRunner().invoke(cli, ["train", "simulate", "--devices", "0"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == ["error: --devices must be 1..10000, got 0"]


def test_parse_mix_weights_default_to_one() -> None:
    assert parse_mix("rpi4, esp32-s3:2") == [("rpi4", 1.0), ("esp32-s3", 2.0)]


@pytest.mark.slow
def test_eight_virtual_devices_run_a_round_on_ray_selecting_by_battery(tmp_path: Path) -> None:
    from edgefleet.devtools.fl_sim import run_simulation

    opts = SimOptions(
        devices=8, rounds=1, fraction=1.0, groups=2, select="battery >= 50",
        mix="phone-budget:1,rpi4:1", samples=16, local_epochs=1,
    )  # fmt: skip
    plan = {d.device: d for d in plan_fleet(opts)}
    seen: list[int] = []
    doc = run_simulation(opts, tmp_path, lambda r: seen.append(r["round"]))
    assert doc["state"] == "succeeded", doc.get("reason")
    assert seen == [1]
    # every virtual node reported its planned facts, and selection used them
    reported = {d["device"]: d for d in doc["devices"].values()}
    assert set(reported) == set(plan)
    eligible = {
        name for name, d in plan.items() if d.battery is None or d.battery >= 50
    }  # mains-powered Pis count as full
    assert {n for n, d in reported.items() if d["selected"]} == eligible
    assert set(doc["rounds"][0]["participants"]) == eligible
    assert doc["simulation"]["peak_rss_bytes"] > 0


def test_cli_without_ray_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    res = CliRunner().invoke(cli, ["train", "simulate", "--devices", "4", "--groups", "2"])
    assert res.exit_code == 1, res.output
    assert "needs Ray: pip install 'edgefleet[simulation]'" in res.output
    assert "Traceback" not in res.output


@pytest.mark.slow
def test_cli_run_whose_selector_matches_no_device_fails_in_one_line(tmp_path: Path) -> None:
    args = ["train", "simulate", "-n", "4", "--groups", "2", "--rounds", "1"]
    args += ["--select", "ram >= 100GiB", "--work-dir", str(tmp_path)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: simulated run failed: only 0 device(s) match ram >= 100GiB (of 4 answering); "
        "--min-devices is 1"
    ]
    assert "Traceback" not in res.output
