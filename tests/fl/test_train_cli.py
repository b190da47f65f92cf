"""``edgefleet train``: argument errors are one line, listings read run records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from coordinator.cli.train_cmds import train_app

runner = CliRunner()


def fl_snapshot(redis_url: str) -> tuple[list[Any], dict[str, int]]:
    """The fleet state's federated records, as the coordinator's metrics refresh reads them."""
    import asyncio

    import redis.asyncio as aioredis

    from coordinator.store import FleetStore

    async def read() -> tuple[list[Any], dict[str, int]]:
        store = FleetStore(aioredis.Redis.from_url(redis_url, decode_responses=True))
        try:
            return await store.fl_snapshot()
        finally:
            await store.close()

    return asyncio.run(read())


def test_bad_selection_is_rejected_before_anything_starts(tmp_path: Path) -> None:
    res = runner.invoke(
        train_app,
        ["start", "mlp", "--local", "2", "--select", "ram>=lots", "--runs-dir", str(tmp_path)],
    )
    assert res.exit_code == 1
    assert "ram needs a number, got 'lots'" in res.output
    assert not any(tmp_path.iterdir())


def test_unknown_strategy_and_missing_target(tmp_path: Path) -> None:
    res = runner.invoke(train_app, ["start", "mlp", "--strategy", "fedsgd", "--local", "2"])
    assert res.exit_code == 1 and "--strategy must be one of" in res.output
    res = runner.invoke(
        train_app,
        ["start", "mlp", "--superlink", "h:1", "--local", "2", "--runs-dir", str(tmp_path)],
    )
    assert res.exit_code == 1 and "at most one of --superlink" in res.output
    # no target: the coordinator on the data dir is asked, and there is none
    data = tmp_path / "data"
    res = runner.invoke(
        train_app, ["start", "mlp", "--runs-dir", str(tmp_path), "--data-dir", str(data)]
    )
    assert res.exit_code == 1 and "no coordinator runs with data dir" in res.output
    # a coordinator that runs no SuperLink says so
    data.mkdir()
    (data / "coordinator.json").write_text(
        json.dumps({"address": "127.0.0.1:1", "superlink": None})
    )
    res = runner.invoke(
        train_app, ["start", "mlp", "--runs-dir", str(tmp_path), "--data-dir", str(data)]
    )
    assert res.exit_code == 1 and "runs no SuperLink" in res.output


def test_ls_and_status_read_the_run_record(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"superlink": "127.0.0.1:9093", "flwr_run_id": 7}))
    (run / "progress.json").write_text(
        json.dumps(
            {
                "state": "succeeded",
                "settings": {"num_rounds": 1, "strategy": "heterofl", "arch": "mlp"},
                "rounds": [
                    {"round": 1, "participants": ["a", "b"], "train_loss": 0.5,
                     "client_eval_acc": 0.7, "test_acc": 0.8, "seconds": 4.2}
                ],
                "final": {"test_acc": 0.8},
            }
        )
    )  # fmt: skip
    res = runner.invoke(train_app, ["ls", "--runs-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0
    [doc] = json.loads(res.output)
    assert doc["name"] == "r1" and doc["state"] == "succeeded" and doc["strategy"] == "heterofl"
    res = runner.invoke(train_app, ["status", "r1", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 0
    assert "round 1/1: 2 device(s), loss 0.500, client acc 70.0%, test acc 80.0%" in res.output
    res = runner.invoke(train_app, ["status", "nope", "--runs-dir", str(tmp_path)])
    assert res.exit_code == 1 and "no run 'nope'" in res.output


def test_a_running_record_whose_serverapp_is_gone_reads_as_failed(tmp_path: Path) -> None:
    run = tmp_path / "r2"
    run.mkdir()
    (run / "meta.json").write_text("{}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (run / "progress.json").write_text(json.dumps({"state": "running", "pid": int(dead.stdout)}))
    res = runner.invoke(train_app, ["status", "r2", "--runs-dir", str(tmp_path)])
    assert "r2: failed the ServerApp process is gone" in res.output


def test_rounds_are_recorded_in_the_fleet_state_for_metrics(redis_url: str) -> None:
    """`train start --redis-url` puts each round where the coordinator exports edgefleet_fl_*."""
    from coordinator.cli.train_cmds import _report_rounds

    rounds = [
        {"round": 1, "train_loss": 0.9, "test_acc": 0.5, "participants": ["a", "b"]},
        {"round": 2, "train_loss": 0.4, "test_acc": 0.7, "participants": ["a", "b", "c"]},
    ]
    _report_rounds(redis_url, "mlp", "run-x", rounds, failed=True)

    latest, outcomes = fl_snapshot(redis_url)
    assert outcomes == {"completed": 2, "failed": 1}
    [mlp] = latest
    assert (mlp.model, mlp.round, mlp.outcome) == ("mlp", 3, "failed")


def test_round_records_wait_for_an_unreachable_fleet_state_and_go_out_once(
    redis_url: str, tmp_path: Path
) -> None:
    """A coordinator restarting takes its embedded Redis away for a moment: following the run
    must neither fail nor lose or double a record; a succeeded run records no failed round."""
    from coordinator.cli.train_cmds import _follow, _RoundReporter

    run = tmp_path / "r"
    run.mkdir()
    rounds = [
        {"round": 1, "train_loss": 0.9, "test_acc": 0.5, "participants": ["a", "b"], "seconds": 1},
        {"round": 2, "train_loss": 0.4, "test_acc": 0.7, "participants": ["a", "b"], "seconds": 1},
    ]
    (run / "progress.json").write_text(
        json.dumps({"state": "succeeded", "rounds": rounds, "settings": {"num_rounds": 2}})
    )
    reporter = _RoundReporter(f"unix://{tmp_path / 'gone.sock'}", "mlp", "r", quiet=True)
    doc = _follow(run, True, 10, reporter)
    assert doc["state"] == "succeeded"
    assert len(reporter.pending) == 2 and reporter.warned  # kept, not lost, not fatal
    reporter.redis_url = redis_url  # the fleet state is back
    reporter.drain(timeout=5)
    assert reporter.pending == []
    reporter.drain(timeout=5)  # nothing twice

    latest, outcomes = fl_snapshot(redis_url)
    assert outcomes.get("completed") == 2 and not outcomes.get("failed"), outcomes
    assert [(r.model, r.round) for r in latest] == [("mlp", 2)]
