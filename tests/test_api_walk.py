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

from pathlib import Path

import pytest
import redis

from edgefleet.fl.redis_secret import (
    PASSWORD_ENV,
    USERNAME_ENV,
    credentials_env,
    strip_credentials,
    with_credentials,
)
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
