"""SecAgg+ over the API: ``train start --secure-agg`` reaches the ServerApp through StartRun.

Fast tests: the refusals, one line each, by the CLI (exit 2, before any connection) and by the
coordinator's checks (the field they name), and the flag's way from the CLI's request to the
ServerApp's run config. The rounds themselves run in the slow tests below (real coordinator,
real SuperNodes) and in ``test_secagg_partial.py`` (Flower's workflow in process).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli.train_cmds import train_app
from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.fl.runs import RunRequest, _check

runner = CliRunner()


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A coordinator configured (nothing listens there): a refusal must come before any call."""
    monkeypatch.setenv("EDGEFLEET_COORDINATOR", "127.0.0.1:9")
    monkeypatch.setenv("EDGEFLEET_ADMIN_TOKEN", "t")
    monkeypatch.setenv("EDGEFLEET_INSECURE", "1")
    monkeypatch.delenv("EDGEFLEET_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("api_env")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-devices", "2"], "--secure-agg needs --min-devices 3 or more"),
        (["--min-devices", "3", "--strategy", "fedbuff"], "--secure-agg runs fedavg/fedprox"),
        (["--min-devices", "3", "--dp", "client-fixed"], "--secure-agg runs fedavg/fedprox"),
        (["--min-devices", "3", "--update-codec", "q8"], "--secure-agg runs fedavg/fedprox"),
    ],
)
def test_the_cli_refuses_secure_agg_it_cannot_run_in_one_line(
    args: list[str], message: str
) -> None:
    res = runner.invoke(train_app, ["start", "mlp", "--secure-agg", *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.usefixtures("api_env")
def test_secure_agg_over_the_api_is_no_longer_refused_by_the_cli() -> None:
    """It gets as far as calling the coordinator (here: nobody listens, exit 1)."""
    res = runner.invoke(train_app, ["start", "mlp", "--secure-agg", "--min-devices", "3"])
    assert res.exit_code == 1, res.output
    assert "not available over the API" not in res.output


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_devices": 2}, "needs min_devices >= 3"),
        ({"min_devices": 3, "strategy": "heterofl"}, "runs fedavg/fedprox rounds"),
        ({"min_devices": 3, "dp": "server-fixed"}, "runs fedavg/fedprox rounds"),
        ({"min_devices": 3, "update_codec": "topk:0.1"}, "runs fedavg/fedprox rounds"),
    ],
)
def test_the_coordinator_refuses_secure_agg_it_cannot_run(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        _check(RunRequest(model="mlp", secure_agg=True, **fields))  # type: ignore[arg-type]
    assert "secure_agg" in str(err.value)
    _check(RunRequest(model="mlp", secure_agg=True, min_devices=3))  # and this one runs


def test_every_side_agrees_on_secure_aggs_fewest_devices() -> None:
    from edgefleet.cli import train_validate
    from edgefleet.coordinator.fl import runs
    from edgefleet.flower import secagg

    assert runs.SECURE_AGG_MIN_DEVICES == train_validate.SECURE_AGG_MIN_DEVICES
    assert runs.SECURE_AGG_MIN_DEVICES == secagg.MIN_DEVICES
