"""``edgefleet train``: argument errors are one line, listings read run records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.cli.train_cmds import train_app

runner = CliRunner()


def _plain(text: str) -> str:
    """Click's boxed usage errors as one line of words."""
    return " ".join(text.replace("│", " ").split())


def fl_snapshot(redis_url: str) -> tuple[list[Any], dict[str, int]]:
    """The fleet state's federated records, as the coordinator's metrics refresh reads them."""
    import asyncio

    import redis.asyncio as aioredis

    from edgefleet.coordinator.state.store import FleetStore

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
    assert res.exit_code == 2  # a usage error, found before anything starts
    assert "ram needs a number, got 'lots'" in res.output
    assert not any(tmp_path.iterdir())


def test_unknown_strategy_and_missing_target(tmp_path: Path) -> None:
    res = runner.invoke(train_app, ["start", "mlp", "--strategy", "fedsgd", "--local", "2"])
    assert res.exit_code == 2 and "'fedavg', 'fedprox', 'heterofl'" in _plain(res.output)
    res = runner.invoke(
        train_app,
        ["start", "mlp", "--superlink", "h:1", "--local", "2", "--runs-dir", str(tmp_path)],
    )
    assert res.exit_code == 2 and "at most one of --superlink" in res.output
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
    from edgefleet.cli.train_cmds import _report_rounds

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
    from edgefleet.cli.train_cmds import _RoundReporter
    from edgefleet.cli.train_follow import follow_rounds as _follow

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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "-1"], "--lr must be > 0, got -1"),
        (["--lr", "nan"], "--lr must be a finite number, got nan"),
        (["--lr", "0"], "--lr must be > 0, got 0"),
        (["--local-epochs", "0"], "--local-epochs must be >= 1, got 0"),
        (["--proximal-mu", "-0.5"], "--proximal-mu must be >= 0"),
        (["--dp-clip", "0"], "--dp-clip must be > 0"),
        (["--dp-noise", "inf"], "--dp-noise must be a finite number"),
        (["--round-timeout", "-5"], "--round-timeout must be > 0"),
        (["--timeout", "nan"], "--timeout must be a finite number"),
        (["--local", "-2"], "--local must be >= 0"),
    ],
)
def test_numbers_are_refused_before_anything_starts(
    tmp_path: Path, args: list[str], message: str
) -> None:
    runs = tmp_path / "runs"
    res = runner.invoke(train_app, ["start", "mlp", "--local", "2", "--runs-dir", str(runs), *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and res.stderr.count("\n") == 1
    assert not runs.exists()


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--min-devices", "0"], ["--dp", "x"]])
def test_click_range_and_choice_errors_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    res = runner.invoke(train_app, ["start", "mlp", "--local", "2", *args])
    assert res.exit_code == 2


def test_strategy_choices_match_the_serverapp() -> None:
    from edgefleet.cli.train_validate import FL_STRATEGIES
    from edgefleet.flower.serverapp import STRATEGIES

    assert FL_STRATEGIES == STRATEGIES


def test_runs_dir_defaults_to_the_data_dir_not_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgefleet.cli.train_validate import resolve_runs_dir as _runs_dir

    monkeypatch.chdir(tmp_path)
    assert _runs_dir(None, Path("d")) == tmp_path / "d" / "fl-runs"
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", "/srv/edgefleet")
    assert _runs_dir(None, None) == Path("/srv/edgefleet/fl-runs")
    assert _runs_dir(Path("r"), None) == tmp_path / "r"
    # a record under DATA_DIR/fl-runs is found from any directory
    run = tmp_path / "data" / "fl-runs" / "r1"
    run.mkdir(parents=True)
    (run / "meta.json").write_text("{}")
    (run / "progress.json").write_text(json.dumps({"state": "succeeded"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "data"))
    res = runner.invoke(train_app, ["status", "r1"])
    assert res.exit_code == 0 and "r1: succeeded" in res.output


def _finished(final: float, initial: float) -> dict[str, Any]:
    return {"name": "r", "state": "succeeded", "settings": {"num_rounds": 1}, "rounds": [],
            "final": {"test_acc": final}, "initial": {"test_acc": initial}}  # fmt: skip


def _fake_run(monkeypatch: pytest.MonkeyPatch, doc: dict[str, Any]) -> list[str]:
    """Everything after validation stubbed: the run 'finishes' with ``doc``; returns the
    names of models _publish was asked to register."""
    from edgefleet.cli import train_follow, train_publish, train_validate
    from edgefleet.coordinator.fl import superlink

    published: list[str] = []
    monkeypatch.setattr(superlink, "write_app", lambda path, config: path)
    monkeypatch.setattr(superlink, "submit", lambda *a, **k: 1)
    monkeypatch.setattr(train_follow, "follow_rounds", lambda *a, **k: doc)
    monkeypatch.setattr(
        train_validate, "open_store", lambda data_dir: type("S", (), {"models": list})()
    )

    def publish(store: Any, new_model: str, *rest: Any) -> dict[str, Any]:
        published.append(new_model)
        return {"registered": {"model": new_model}}

    monkeypatch.setattr(train_publish, "_publish", publish)
    return published


def test_a_fine_tuned_model_worse_than_its_base_is_registered_with_a_loud_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = _fake_run(monkeypatch, _finished(final=0.80, initial=0.90))
    args = ["start", "mlp", "--superlink", "h:1", "--register", "--name", "r",
            "--runs-dir", str(tmp_path)]  # fmt: skip
    res = runner.invoke(train_app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    assert "WARNING: the fine-tuned model is worse than its base" in res.stderr
    assert "80.0% vs 90.0% (-10.0 points)" in res.stderr and published == ["mlp-ft-r"]
    doc = json.loads(res.stdout)
    assert doc["test_accuracy"]["worse_than_base"] is True
    assert doc["test_accuracy"]["change_points"] == pytest.approx(-10.0)


def test_an_improved_model_reports_its_accuracy_without_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = _fake_run(monkeypatch, _finished(final=0.93, initial=0.90))
    res = runner.invoke(
        train_app, ["start", "mlp", "--superlink", "h:1", "--register", "--name", "r2",
                    "--runs-dir", str(tmp_path)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "test accuracy 90.0% -> 93.0% (+3.0 points)" in res.stdout
    assert "WARNING" not in res.stderr and published == ["mlp-ft-r2"]


def test_accuracy_falls_back_to_the_base_variant_when_the_run_has_no_initial() -> None:
    from edgefleet.cli.train_publish import _accuracy, _accuracy_line

    class Store:
        def load(self, vid: str) -> Any:
            return type("B", (), {"manifest": {"metrics": {"accuracy": 0.95}}})()

    entry = type("E", (), {"base": "v"})()
    acc = _accuracy({"final": {"test_acc": 0.9}, "initial": None}, Store(), entry)  # type: ignore[arg-type]
    assert acc["worse_than_base"] and acc["base"] == 0.95
    assert _accuracy_line(acc) == "test accuracy 95.0% -> 90.0% (-5.0 points)"
    unknown = _accuracy({"final": None}, None, None)
    assert not unknown["worse_than_base"]
    assert _accuracy_line(unknown) == "test accuracy: not reported by the run"


def test_a_failed_json_run_exits_1_without_a_stray_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = {"name": "r3", "state": "failed", "reason": "no devices", "rounds": []}
    _fake_run(monkeypatch, doc)
    res = runner.invoke(
        train_app,
        ["start", "mlp", "--superlink", "h:1", "--name", "r3", "--runs-dir", str(tmp_path),
         "--json"],
    )  # fmt: skip
    assert res.exit_code == 1
    assert json.loads(res.stdout)["state"] == "failed" and "error" not in res.stderr
