"""Everything over the API (issue 18): what an operator without any data dir can do, end to end,
and the fleet Redis's password kept out of Flower's run config.

The walk: a bare temporary working directory, HOME an empty directory, only
``EDGEFLEET_COORDINATOR``/``EDGEFLEET_ADMIN_TOKEN`` set (no ``--data-dir`` anywhere), the real
``edgefleet`` CLI in subprocesses against a real coordinator (real Redis), a real
``edgefleet worker`` and real simulated agents: ``models add`` (a user module and a user
dataset), ``models build`` (its progress), ``deploy``, ``models export``, ``models rm``; the
slow variant also runs ``train start``/``train status`` with two agents' SuperNodes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from edgefleet.fl.redis_secret import (
    PASSWORD_ENV,
    USERNAME_ENV,
    credentials_env,
    strip_credentials,
    with_credentials,
)
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, AgentProc, CoordinatorProc, wait_for
from tests.redis_procs import RedisProc

# --- the fleet Redis's password never enters a run config ----------------------------------


@pytest.mark.parametrize(
    ("url", "clean"),
    [
        ("redis://fleet:s%40cret@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:1/2", "redis://h:1/2"),
        ("unix:///tmp/r.sock?db=0&password=pw", "unix:///tmp/r.sock?db=0"),
        ("redis+sentinel://u:p@h1:1,h2:2/master/0", "redis+sentinel://h1:1,h2:2/master/0"),
        ("rediss://u:p@h/0?ssl_cert_reqs=none", "rediss://h/0?ssl_cert_reqs=none"),
        ("redis://h:1/0", "redis://h:1/0"),
    ],
)
def test_credentials_leave_the_url_and_come_back_from_the_environment(url: str, clean: str) -> None:
    from redis.connection import parse_url

    assert strip_credentials(url) == clean
    back = with_credentials(clean, credentials_env(url))
    if "sentinel" not in url:  # redis-py's own parser reads the same login back
        want = parse_url(url)  # type: ignore[no-untyped-call]
        got = parse_url(back)  # type: ignore[no-untyped-call]
        assert (got.get("username"), got.get("password")) == (
            want.get("username"),
            want.get("password"),
        )
    # a URL that carries its own login keeps it; no environment, no change
    if url != clean:
        assert with_credentials(url, {PASSWORD_ENV: "other"}) == url
    assert with_credentials(clean, {}) == clean


def test_the_serverapps_run_store_logs_in_with_the_password_from_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that requires a password: the run config's credential-free URL alone cannot
    write the run's record, the same URL with the SuperLink's environment can."""
    from edgefleet.flower.run_store import RunStore

    server = RedisProc(tmp_path / "pw").start()
    try:
        with redis.Redis(port=server.port) as admin:
            admin.config_set("requirepass", "pw-123")
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
        monkeypatch.delenv(USERNAME_ENV, raising=False)
        without = RunStore(server.url, "r")
        without.write({"state": "running"})
        assert without._pending == {"state": "running"}  # refused (NOAUTH): kept for later
        without.close(timeout=0)

        monkeypatch.setenv(PASSWORD_ENV, "pw-123")
        store = RunStore(server.url, "r")
        store.write({"state": "running"})
        assert store._pending is None  # written
        store.close()
        with redis.Redis(port=server.port, password="pw-123") as reader:
            assert reader.dbsize() > 0  # the record went in
    finally:
        server.kill()


# --- an exported program (.pt2) is refused with the way to turn it into a checkpoint ----------


def test_an_exported_program_is_refused_in_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``models add --checkpoint m.pt2``: over the API, one line before anything is read or
    sent; locally, the checkpoint reader names the same fix (the recipe itself is checked by
    the slow test below: torch.export takes seconds)."""
    from typer.testing import CliRunner

    from edgefleet.cli.app import app
    from edgefleet.zoo import CheckpointMismatchError, load_checkpoint

    (tmp_path / "m.pt2").write_bytes(b"PK not read")
    monkeypatch.chdir(tmp_path)
    args = ["models", "add", "m", "--arch", "mlp", "--dataset", "digits", "--checkpoint", "m.pt2"]
    remote = {"EDGEFLEET_COORDINATOR": "127.0.0.1:1", "EDGEFLEET_ADMIN_TOKEN": "t"}
    done = CliRunner().invoke(app, args, env=remote)
    assert done.exit_code == 1, done.output
    assert "is an exported program" in done.stderr and "torch.save(" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    with pytest.raises(CheckpointMismatchError, match=r"exported program .*torch\.save\("):
        load_checkpoint(tmp_path / "m.pt2")


@pytest.mark.slow  # torch.export of even a tiny model takes 3-13 s on this box
def test_the_fix_named_for_an_exported_program_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from torch import nn

    from edgefleet.zoo import load_checkpoint, load_state_dict_strict

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 4),)), tmp_path / "m.pt2")
    monkeypatch.chdir(tmp_path)
    # the recipe from the message, as written
    torch.save(torch.export.load("m.pt2").state_dict, "weights.pt")
    fresh = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    load_state_dict_strict(fresh, load_checkpoint(tmp_path / "weights.pt"))
    x = torch.randn(5, 4)
    assert torch.equal(fresh(x), model(x))


# --- the walk: every verb over the API, from a directory with no data dir ----------------------

USER_MODULE = '''\
"""A user's own network: 8 sensor readings, 3 classes."""
import torch.nn as nn


def Net(hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))
'''


@dataclass
class Operator:
    """The real ``edgefleet`` console script, run the way an operator on another host runs it:
    a bare working directory, HOME an empty directory (no contexts, no caches, no data dir),
    and only the coordinator's address and admin token in the environment."""

    cwd: Path
    home: Path
    address: str
    pythonpath: Path  # where the user's own module lives (as on the operator's laptop)

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("EDGEFLEET_") and k not in ("HOME", "XDG_CONFIG_HOME")
        }
        env.update(
            HOME=str(self.home), EDGEFLEET_COORDINATOR=self.address,
            EDGEFLEET_ADMIN_TOKEN=ADMIN_TOKEN, EDGEFLEET_INSECURE="1",  # plaintext test fleet
            PYTHONPATH=os.pathsep.join([str(self.pythonpath), env.get("PYTHONPATH", "")]),
            COLUMNS="120",
        )  # fmt: skip
        return env

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet.cli.main", *args],
            cwd=self.cwd, env=self.env(), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def ok(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = self.run(*args, timeout=timeout)
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done

    def json(self, *args: str, timeout: float = 300) -> Any:
        return json.loads(self.ok(*args, "--json", timeout=timeout).stdout)


def _user_files(user: Path) -> None:
    """The operator's own model (module + checkpoint) and data (.npz), outside any data dir."""
    import torch

    user.mkdir()
    (user / "sensornet.py").write_text(USER_MODULE)
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    x = rng.standard_normal((90, 8)).astype(np.float32) + y[:, None].astype(np.float32)
    np.savez(user / "sensors.npz", x=x, y=y)
    sys.path.insert(0, str(user))
    try:
        import sensornet  # type: ignore[import-not-found]

        torch.manual_seed(0)
        torch.save(sensornet.Net().state_dict(), user / "sensornet.pt")
    finally:
        sys.path.remove(str(user))
        sys.modules.pop("sensornet", None)


def _worker(redis_url: str, data_dir: Path, fleet: Path) -> subprocess.Popen[bytes]:
    """A real ``edgefleet worker``: its own data dir (a cache), the fleet's Redis and key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    data_dir.mkdir(parents=True)
    log = (data_dir.parent / "worker.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "edgefleet.cli.main", "worker", "--redis-url", redis_url,
         "--data-dir", str(data_dir), "--fleet-dir", str(fleet), "--name", "walk-worker",
         "--monitor-interval", "1", "--abandon-grace", "3", "--maintenance-interval", "1"],
        stdout=log, stderr=log, env=env,
    )  # fmt: skip


@pytest.mark.slow  # a coordinator, a worker, two agents (with SuperNodes), builds and a round
@pytest.mark.timeout(900)
@pytest.mark.parametrize("train", [False, True], ids=["no-training", "with-training"])
def test_every_verb_over_the_api_from_a_directory_with_no_data_dir(
    train: bool,
    tmp_path: Path,
    redis_url: str,
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
) -> None:
    from edgefleet.fleet_dir import init_fleet

    began = time.monotonic()
    took: dict[str, float] = {}

    def lap(step: str, since: list[float] = [began]) -> None:  # noqa: B006 - a stopwatch
        now = time.monotonic()
        took[step] = round(now - since[0], 1)
        since[0] = now

    fleet = tmp_path / "fleet"
    init_fleet(fleet)
    federation = ("--superlink", "local") if train else ()
    coord = coordinator_factory(
        "--redis-url", redis_url, "--fleet-dir", str(fleet), "--rollout-interval", "0.2",
        "--offline-after", "5", "--heartbeat-interval", "0.5", *federation,
    )  # fmt: skip
    worker = _worker(redis_url, tmp_path / "worker" / "data", fleet)
    agents = []
    for i in range(2):
        extra = ["--token", ENROLL_TOKEN]
        if train:  # each holds its own shard of the digits, as a device holds its users' data
            extra += ["--local-data", "digits", "--partition", f"{i}/2"]
        agents.append(agent_factory(coord.address, "rpi4", f"dev-{i}", *extra))
    user = tmp_path / "user"
    _user_files(user)
    op = Operator(tmp_path / "nowhere", tmp_path / "home", coord.address, user)
    op.cwd.mkdir()
    op.home.mkdir()
    lap("start")
    try:
        # models add: the user's module and checkpoint and the user's dataset, uploaded
        added = op.json(
            "models", "add", "sensors", "--arch", "custom", "--import-path", "sensornet:Net",
            "--checkpoint", str(user / "sensornet.pt"), "--dataset", str(user / "sensors.npz"),
            "--latency-runs", "5",
        )  # fmt: skip
        assert added["state"] == "pending", added
        lap("models add")
        # models build: a job on the worker; its progress is drawn on stderr as it goes
        built = op.ok(
            "models", "build", "sensors", "--recipes", "int8-dynamic", "--latency-runs", "5",
            "--timeout", "10m",
        )  # fmt: skip
        assert "queued job build-" in built.stderr and "int8-dynamic" in built.stderr
        assert "built 1 variant(s) of sensors" in built.stdout, built.stdout
        variants = op.json("models", "variants", "sensors")
        assert sorted(v["recipe"] for v in variants) == ["fp32", "int8-dynamic"], variants
        lap("models build")
        # deploy: both agents download, verify and activate a variant of the user's model
        wait_for(lambda: _online(op) == 2, 120, f"two agents online; logs in {tmp_path}")
        rollout = op.json(
            "deploy", "sensors", "--to", "all", "--soak", "0.2", "--min-inferences", "0"
        )
        wait_for(
            lambda: (
                op.json("rollout", "status", rollout["id"])["state"]
                in ("succeeded", "rolled_back", "failed")
            ),
            180,
            "the rollout to end",
        )
        status = op.json("rollout", "status", rollout["id"])
        assert status["state"] == "succeeded", status
        ids = {v["id"] for v in variants}
        devices = op.json("devices", "ls")
        assert len(devices) == 2 and all(d["variant"] in ids for d in devices), devices
        lap("deploy")
        if train:
            # train start / status: a federated round on the agents' own SuperNodes
            run = op.json(
                "train", "start", "mlp", "--rounds", "1", "--min-devices", "2", "--name",
                "walk", "--timeout", "600", "--deploy", "all", timeout=700,
            )  # fmt: skip
            assert run["state"] == "succeeded" and len(run["rounds"]) == 1, run
            assert len(run["rounds"][0]["participants"]) == 2, run
            # --deploy: the ServerApp registered the result, the CLI rolled it out over the API
            assert run["registered_model"] == "mlp-ft-walk", run.get("register_error")
            assert len(run["rollout"]["devices"]) == 2, run["rollout"]
            assert op.json("rollout", "status", run["rollout"]["id"])["model"] == "mlp-ft-walk"
            shown = op.ok("train", "status", "walk")
            assert "walk: succeeded" in shown.stdout, shown.stdout
            lap("train")
        # models export: the int8 variant's ONNX, written where the operator asks
        out = tmp_path / "exported"
        exported = op.json(
            "models", "export", "sensors", "int8-dynamic", "--format", "onnx", "--out", str(out)
        )
        (written,) = exported["files"]
        import onnx

        onnx.checker.check_model(onnx.load(written["path"]))  # a whole, valid ONNX model
        lap("models export")
        # models rm: refused while devices run the model, done once nobody does
        if train:  # the devices moved to the fine-tuned model: the user's model is free
            tuned = {v["id"] for v in op.json("models", "variants", "mlp-ft-walk")}
            wait_for(
                lambda: all(d["variant"] in tuned for d in op.json("devices", "ls")),
                180,
                "both devices to run the fine-tuned model",
            )
            removed = op.json("models", "rm", "sensors")
            assert removed["name"] == "sensors" and removed["removed_variants"], removed
            assert [m["name"] for m in op.json("models", "ls")] == ["mlp-ft-walk"]
        else:
            refused = op.run("models", "rm", "sensors")
            assert refused.returncode == 1 and "is in use" in refused.stderr, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            op.json(
                "models", "add", "spare", "--arch", "custom", "--import-path", "sensornet:Net",
                "--checkpoint", str(user / "sensornet.pt"), "--dataset",
                str(user / "sensors.npz"),
            )  # fmt: skip
            removed = op.json("models", "rm", "spare")
            assert removed["name"] == "spare", removed
            assert [m["name"] for m in op.json("models", "ls")] == ["sensors"]
        lap("models rm")
        # nothing was written where the operator stood, nor in their home
        assert list(op.cwd.iterdir()) == [] and list(op.home.iterdir()) == []
    finally:
        worker.kill()
        worker.wait(10)
    print(f"\nwalk ({'with' if train else 'without'} training) seconds per step: {took}")


def _online(op: Operator) -> int:
    listed = op.run("devices", "ls", "--json")
    if listed.returncode != 0:
        return 0
    return sum(1 for d in json.loads(listed.stdout) if d["status"] == "online")
