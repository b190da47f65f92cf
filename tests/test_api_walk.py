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
