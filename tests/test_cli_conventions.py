"""CLI conventions (issue 14): exit codes, -h/--version, global options on either side of the
subcommand, named contexts and their precedence, strict JSON, percent-speaking errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from edgefleet.cli import common, rollout_cmds
from edgefleet.cli.main import app
from edgefleet.cli.settings import ConfigError, EdgefleetConfig, resolve
from edgefleet.client.jsonout import dumps
from edgefleet.v1 import admin_pb2

runner = CliRunner()
_ENV = (
    "EDGEFLEET_COORDINATOR",
    "EDGEFLEET_ADMIN_TOKEN",
    "EDGEFLEET_CA_CERT",
    "EDGEFLEET_INSECURE",
    "EDGEFLEET_CONTEXT",
    "EDGEFLEET_DEBUG",
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ambient settings: a config file of our own, no EDGEFLEET_* variables."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config.toml"
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(config))
    monkeypatch.setenv("EDGEFLEET_DATA_DIR", str(tmp_path / "data"))  # no default CA there
    return config


class FakeAdmin:
    """Stands in for AdminClient: records how it was built, answers with canned replies."""

    built: ClassVar[list[dict[str, Any]]] = []
    rollout = admin_pb2.Rollout(id="ro-1", model="m", state="rolled_back", waves=[1.0])

    def __init__(self, address: str, token: str, ca_cert: bytes | None = None) -> None:
        FakeAdmin.built.append({"address": address, "token": token, "ca_cert": ca_cert})

    def __enter__(self) -> FakeAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def list_devices(self, *args: Any) -> list[admin_pb2.Device]:
        return []

    def fleet_summary(self) -> admin_pb2.GetFleetSummaryResponse:
        return admin_pb2.GetFleetSummaryResponse(total=0)

    def get_rollout(self, rollout_id: str) -> admin_pb2.Rollout:
        return FakeAdmin.rollout

    def create_rollout(self, request: admin_pb2.CreateRolloutRequest) -> admin_pb2.Rollout:
        raise AssertionError("a usage error must be refused before the coordinator is called")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeAdmin]:
    FakeAdmin.built = []
    FakeAdmin.rollout = admin_pb2.Rollout(id="ro-1", model="m", state="rolled_back", waves=[1.0])
    monkeypatch.setattr(common, "AdminClient", FakeAdmin)
    return FakeAdmin


# --- exit codes ------------------------------------------------------------------------------


def test_watching_a_rolled_back_rollout_exits_3_without_an_error_line(
    fake: type[FakeAdmin],
) -> None:
    res = runner.invoke(
        app, ["--insecure", "rollout", "status", "ro-1", "--watch", "--admin-token", "t"]
    )
    assert res.exit_code == 3, res.output
    assert "error" not in res.stderr  # was "error: 3" and exit 1: Exit is a RuntimeError


def test_one_line_errors_lets_click_exits_through() -> None:
    import typer

    @common.one_line_errors
    def leave(code: int) -> None:
        raise typer.Exit(code)

    for code in (0, 2, 3):
        with pytest.raises(typer.Exit) as caught:
            leave(code)
        assert caught.value.exit_code == code


def test_runtime_failure_is_one_line_and_exit_1(fake: type[FakeAdmin]) -> None:
    res = runner.invoke(app, ["devices", "ls", "--admin-token", "t"])  # TLS, and no CA anywhere
    assert res.exit_code == 1
    assert res.stderr.count("error:") == 1 and "no CA certificate" in res.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "canary", "--canary", "150"], "--canary is a percentage"),
        (["--strategy", "canary", "--canary", "nan"], "--canary is a percentage"),
        (["--strategy", "canary", "--canary", "0"], "in (0, 100), got 0"),
        (["--strategy", "waves", "--waves", "5,0.5"], "--waves must increase"),
        (["--strategy", "waves", "--waves", "5,250"], "percentages in (0, 100]"),
        (["--strategy", "waves", "--waves", "five"], "percentages like 5,25,100"),
    ],
)
def test_canary_and_waves_errors_speak_percent_and_exit_2(
    fake: type[FakeAdmin], args: list[str], message: str
) -> None:
    res = runner.invoke(app, ["--insecure", "deploy", "m", "--admin-token", "t", *args])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and res.stderr.count("\n") == 1


def test_unknown_strategy_is_a_usage_error_listing_the_choices() -> None:
    res = runner.invoke(app, ["deploy", "m", "--strategy", "blue-green"])
    assert res.exit_code == 2
    assert "'all', 'canary', 'waves'" in " ".join(res.stderr.replace("│", " ").split())


def test_exit_codes_of_the_installed_command() -> None:
    """The console entry point itself (not CliRunner): 0, 2 for usage, 1 for runtime."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        code = "from edgefleet.cli.main import main; main()"
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
        )

    assert run("--version").returncode == 0
    assert run("deploy", "m", "--strategy", "nope").returncode == 2
    unreachable = run(
        "devices", "ls", "--coordinator", "127.0.0.1:1", "--insecure", "--admin-token", "x"
    )
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("error: ")


# --- -h, --version ---------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["-h"], ["rollout", "-h"], ["rollout", "status", "-h"]])
def test_short_help_everywhere(args: list[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "Usage:" in res.output


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("edgefleet ")


# --- global options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--coordinator", "h:1", "--admin-token", "t", "--insecure", "devices", "ls"],
        ["devices", "ls", "--coordinator", "h:1", "--admin-token", "t", "--insecure"],
        ["--insecure", "fleet", "summary", "--coordinator", "h:1", "--admin-token", "t"],
        ["fleet", "summary", "--insecure", "--coordinator", "h:1", "--admin-token", "t"],
    ],
)
def test_global_options_before_or_after_the_subcommand(
    fake: type[FakeAdmin], args: list[str]
) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert fake.built == [{"address": "h:1", "token": "t", "ca_cert": None}]


def test_ca_cert_after_the_subcommand(fake: type[FakeAdmin], tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"PEM")
    res = runner.invoke(app, ["fleet", "summary", "--ca-cert", str(ca), "--admin-token", "t"])
    assert res.exit_code == 0, res.output
    assert fake.built[0]["ca_cert"] == b"PEM"


def test_a_flag_before_the_subcommand_beats_the_environment(fake: type[FakeAdmin]) -> None:
    env = {"EDGEFLEET_COORDINATOR": "env:1", "EDGEFLEET_ADMIN_TOKEN": "env-token"}
    res = runner.invoke(app, ["--coordinator", "flag:1", "--insecure", "devices", "ls"], env=env)
    assert res.exit_code == 0, res.output
    assert fake.built[0]["address"] == "flag:1" and fake.built[0]["token"] == "env-token"


# --- contexts --------------------------------------------------------------------------------


def _set_lab(tmp_path: Path) -> None:
    token = tmp_path / "lab.token"
    token.write_text("lab-token\n")
    res = runner.invoke(
        app,
        ["config", "set-context", "lab", "--coordinator", "lab:1", "--insecure",
         "--admin-token-file", str(token)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output


def test_context_supplies_what_no_flag_or_env_gives(fake: type[FakeAdmin], tmp_path: Path) -> None:
    _set_lab(tmp_path)  # the first context becomes the current one
    assert runner.invoke(app, ["devices", "ls"]).exit_code == 0
    assert fake.built[-1] == {"address": "lab:1", "token": "lab-token", "ca_cert": None}
    res = runner.invoke(app, ["devices", "ls"], env={"EDGEFLEET_COORDINATOR": "env:1"})
    assert res.exit_code == 0 and fake.built[-1]["address"] == "env:1"  # env > context
    res = runner.invoke(
        app, ["devices", "ls", "--coordinator", "flag:1"], env={"EDGEFLEET_COORDINATOR": "env:1"}
    )
    assert res.exit_code == 0 and fake.built[-1]["address"] == "flag:1"  # flag > env


def test_context_flag_and_use_context(fake: type[FakeAdmin], tmp_path: Path) -> None:
    _set_lab(tmp_path)
    res = runner.invoke(app, ["config", "set-context", "prod", "--coordinator", "prod:1"])
    assert res.exit_code == 0
    res = runner.invoke(
        app, ["devices", "ls", "--context", "prod", "--insecure", "--admin-token", "t"]
    )
    assert res.exit_code == 0 and fake.built[-1]["address"] == "prod:1"
    assert runner.invoke(app, ["config", "use-context", "prod"]).exit_code == 0
    rows = json.loads(runner.invoke(app, ["config", "get-contexts", "--json"]).stdout)
    assert [(r["name"], r["current"]) for r in rows] == [("lab", False), ("prod", True)]
    res = runner.invoke(app, ["--context", "nope", "devices", "ls"])
    assert (
        res.exit_code == 1
        and "no context 'nope'" in res.stderr
        and "known: lab, prod" in res.stderr
    )
    assert runner.invoke(app, ["config", "use-context", "nope"]).exit_code == 1


def test_set_context_keeps_unset_fields_and_stores_absolute_paths(
    _isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["config", "set-context", "a", "--coordinator", "a:1"]).exit_code == 0
    assert runner.invoke(app, ["config", "set-context", "a", "--ca-cert", "ca.pem"]).exit_code == 0
    ctx = EdgefleetConfig.load(_isolated).get("a")
    assert ctx.coordinator == "a:1" and ctx.ca_cert == str(tmp_path / "ca.pem")
    res = runner.invoke(app, ["config", "set-context", "b", "--coordinator", "no-port"])
    assert res.exit_code == 2 and "HOST:PORT" in res.stderr


def test_broken_config_file_is_one_line(_isolated: Path) -> None:
    _isolated.write_text("[contexts.x]\ncoordinator = 5\n")
    with pytest.raises(ConfigError, match=r"contexts\.x\.coordinator must be a string"):
        EdgefleetConfig.load(_isolated)
    _isolated.write_text("[contexts.x]\ncolour = 'red'\n")
    res = runner.invoke(app, ["config", "get-contexts"])
    assert res.exit_code == 1 and "unknown key(s) colour" in res.stderr
    _isolated.write_text("not toml [")
    res = runner.invoke(app, ["config", "get-contexts"])
    assert res.exit_code == 1 and "is not valid TOML" in res.stderr


def test_unreadable_admin_token_file_names_it(_isolated: Path) -> None:
    _isolated.write_text(
        'current-context = "x"\n[contexts.x]\nadmin-token-file = "/nonexistent/t"\n'
    )
    with pytest.raises(ConfigError, match="cannot read admin-token-file /nonexistent/t"):
        resolve({}, env={"EDGEFLEET_CONFIG": str(_isolated)})


def test_precedence_per_setting(_isolated: Path, tmp_path: Path) -> None:
    _isolated.write_text(
        'current-context = "x"\n[contexts.x]\ncoordinator = "ctx:1"\nca-cert = "/ctx.pem"\n'
        "insecure = true\n"
    )
    env = {"EDGEFLEET_CONFIG": str(_isolated)}
    got = resolve({}, env=env)
    assert (got.coordinator, got.insecure, got.context) == ("ctx:1", True, "x")
    # an explicit CA (flag or env) asks for TLS even when the context says insecure
    assert resolve({"ca_cert": "/flag.pem"}, env=env).insecure is False
    assert resolve({}, env={**env, "EDGEFLEET_CA_CERT": "/env.pem"}).ca_cert == Path("/env.pem")
    assert resolve({}, env={**env, "EDGEFLEET_INSECURE": "0"}).insecure is False  # env > context
    assert resolve({}, env={**env, "EDGEFLEET_INSECURE": ""}).insecure is True  # empty = unset
    assert resolve({"insecure": True, "ca_cert": "/c.pem"}, env=env).insecure is True
    with pytest.raises(ConfigError, match="EDGEFLEET_INSECURE must be"):
        resolve({}, env={**env, "EDGEFLEET_INSECURE": "maybe"})
    missing = {"EDGEFLEET_CONFIG": str(tmp_path / "none.toml")}
    assert resolve({}, env=missing).coordinator == "127.0.0.1:50051"


def test_config_file_round_trips_awkward_names(_isolated: Path) -> None:
    config = EdgefleetConfig(_isolated, current_context='we"ird')
    from edgefleet.cli.settings import Context

    config.contexts['we"ird'] = Context('we"ird', coordinator="h:1", insecure=False)
    config.save()
    again = EdgefleetConfig.load(_isolated)
    assert again.current_context == 'we"ird' and again.get('we"ird').coordinator == "h:1"
    assert oct(_isolated.stat().st_mode & 0o777) == "0o600"


# --- JSON ------------------------------------------------------------------------------------


def test_json_never_contains_nan(fake: type[FakeAdmin]) -> None:
    fake.rollout = admin_pb2.Rollout(
        id="ro-1",
        state="succeeded",
        waves=[1.0],
        devices=[admin_pb2.RolloutDevice(device_id="dev-1", predicted_latency_ms=math.nan)],
    )
    res = runner.invoke(app, ["--insecure", "rollout", "status", "ro-1", "--json"])
    assert res.exit_code == 0, res.output

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in JSON output")

    doc = json.loads(res.stdout, parse_constant=refuse)
    assert doc["devices"][0]["predicted_latency_ms"] is None


def test_dumps_sanitizes_nested_non_finite_values() -> None:
    text = dumps({"a": [math.inf, (1.5, -math.inf)], "b": {"c": math.nan}}, indent=None)
    assert text == '{"a": [null, [1.5, null]], "b": {"c": null}}'


def test_every_json_writer_is_the_shared_one() -> None:
    """No CLI module serialises --json output with json.dumps of its own."""
    cli = Path(common.__file__).parent
    for path in [*cli.glob("*.py"), cli.parent / "devtools" / "demo.py"]:
        if path.name == "jsonout.py":
            continue
        source = path.read_text()
        assert "typer.echo(json.dumps" not in source, path
        assert "sys.stdout.write(json.dumps" not in source, path


def test_completion_of_profiles_and_recipes() -> None:
    from edgefleet.cli.completion import complete_profiles, complete_recipes

    assert "rpi4,rpi-zero2w" in complete_profiles("rpi4,rpi-z")
    assert complete_recipes("fp16,prune-channels+int8-s") == ["fp16,prune-channels+int8-static"]
    assert "distill:width=0.5" in complete_recipes("dis")
    assert rollout_cmds.DEPLOY_STRATEGIES == ("all", "canary", "waves")
    assert os.environ.get("EDGEFLEET_CONFIG")  # the fixture isolates every test


@pytest.mark.parametrize("command", ["status", "pause", "resume", "rollback"])
def test_malformed_rollout_ids_are_usage_errors_that_never_echo_the_blob(
    fake: type[FakeAdmin], command: str
) -> None:
    blob = "ro-" + "x" * 70_000
    res = runner.invoke(app, ["--insecure", "rollout", command, blob, "--admin-token", "t"])
    assert res.exit_code == 2
    assert "malformed rollout id 'ro-xxxxxxxxxxxxxxxxxxxxx'... (70003 characters)" in res.stderr
    assert len(res.stderr) < 300 and fake.built == []  # refused before any call
    res = runner.invoke(app, ["--insecure", "rollout", command, "ro-1; rm -rf /"])
    assert res.exit_code == 2 and "at most 64 of [A-Za-z0-9._-]" in res.stderr


def _complete(words: str) -> list[str]:
    """What bash completion offers for the last word (click's completion protocol)."""
    env = {**os.environ, "_EDGEFLEET_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}  # fmt: skip
    script = Path(sys.executable).parent / "edgefleet"  # the console script: its name keys
    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    return done.stdout.split()


def test_shell_completion_offers_choices_profiles_recipes_and_contexts(_isolated: Path) -> None:
    assert _complete("edgefleet deploy m --strategy ") == ["all", "canary", "waves"]
    assert "rpi4,rpi-zero2w" in _complete("edgefleet simulate --profiles rpi4,rpi-z")
    assert _complete("edgefleet devices ls --status on") == ["online"]
    assert _complete("edgefleet models build m --recipes int8-s") == ["int8-static"]
    assert _complete("edgefleet train start mlp --strategy fedp") == ["fedprox"]
    _isolated.write_text('[contexts.lab]\ncoordinator = "h:1"\n[contexts.prod]\n')
    assert _complete("edgefleet devices ls --context l") == ["lab"]
    assert _complete("edgefleet config use-context p") == ["prod"]


def test_simulated_agents_dial_the_resolved_coordinator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """simulate hands its address to agents itself: it must resolve it like client() does."""
    from edgefleet.devtools import simulate

    dialled: list[str] = []

    def start(**kwargs: Any) -> None:
        dialled.append(kwargs["coordinator"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(simulate.SimulatedFleet, "start", staticmethod(start))
    _set_lab(tmp_path)
    args = ["simulate", "--token", "t", "--state-dir", str(tmp_path / "sim")]
    assert runner.invoke(app, args).exit_code == 1
    assert runner.invoke(app, ["--coordinator", "flag:1", *args]).exit_code == 1
    assert dialled == ["lab:1", "flag:1"]
