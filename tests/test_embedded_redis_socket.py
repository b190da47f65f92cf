"""The embedded Redis socket cannot be hijacked (issue 14).

A data dir too deep for a unix socket path puts the socket under /tmp, where
another local user may have pre-created the directory or started their own
redis-server; neither may be used, and a Redis we did not start is never adopted.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from edgefleet.coordinator.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    fallback_dir,
    redis_server_binary,
)
from tests.conftest import wait_for


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose socket must go to the /tmp fallback; the fallback is removed after."""
    data = tmp_path / ("d" * 60) / ("e" * 60)
    short = fallback_dir((data / "redis").resolve())
    yield data
    if short.is_symlink():
        short.unlink()
    shutil.rmtree(short, ignore_errors=True)


def _short(data: Path) -> Path:
    return fallback_dir((data / "redis").resolve())


def test_the_fallback_dir_is_created_private(deep: Path) -> None:
    server = EmbeddedRedis.start(deep)
    try:
        st = os.lstat(_short(deep))
        assert server.socket.parent == _short(deep)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    finally:
        server.stop()


def test_a_precreated_fallback_dir_with_a_loose_mode_is_refused(deep: Path) -> None:
    _short(deep).mkdir(mode=0o755)
    os.chmod(_short(deep), 0o755)
    with pytest.raises(EmbeddedRedisError, match=r"refusing .*: its mode is 0755, not 0700"):
        EmbeddedRedis.start(deep)
    assert not (_short(deep) / "redis.sock").exists()


def test_a_fallback_dir_that_is_a_symlink_is_refused(deep: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    _short(deep).symlink_to(target)
    with pytest.raises(EmbeddedRedisError, match="symlink or not a directory"):
        EmbeddedRedis.start(deep)
    assert not (target / "redis.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the dir to another user")
def test_a_fallback_dir_owned_by_another_user_is_refused(deep: Path) -> None:
    _short(deep).mkdir(mode=0o700)
    os.chown(_short(deep), 65534, 65534)
    with pytest.raises(EmbeddedRedisError, match="owned by uid 65534"):
        EmbeddedRedis.start(deep)


def _refuses_a_foreign_redis_at(sock: Path, data: Path, elsewhere: Path, *extra: str) -> None:
    """Run a redis-server of our own user but not for ``data`` at ``sock``; start must refuse it."""
    elsewhere.mkdir()
    args = ["--port", "0", "--unixsocket", str(sock), "--dir", str(elsewhere), "--save", "", *extra]
    foreign = subprocess.Popen(
        [redis_server_binary(), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(unix_socket_path=str(sock))
    try:
        wait_for(lambda: sock.exists(), 10, "the foreign redis-server")
        wait_for(lambda: bool(client.ping()), 10, "the foreign redis-server")
        with pytest.raises(EmbeddedRedisError, match=r"refusing the Redis at .*not started for"):
            EmbeddedRedis.start(data)
        # untouched: still running, nothing written into it, nothing shut down
        assert foreign.poll() is None and client.dbsize() == 0
    finally:
        client.close()
        foreign.kill()
        foreign.wait()


def test_a_foreign_redis_at_the_fallback_socket_is_not_adopted(deep: Path, tmp_path: Path) -> None:
    _short(deep).mkdir(mode=0o700)
    _refuses_a_foreign_redis_at(_short(deep) / "redis.sock", deep, tmp_path / "foreign")


def test_a_foreign_redis_at_the_data_dir_socket_is_not_adopted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "redis").mkdir(parents=True, mode=0o700)
    _refuses_a_foreign_redis_at(data / "redis" / "redis.sock", data, tmp_path / "foreign")


def test_a_redis_that_wrote_our_pidfile_but_serves_another_dir_is_not_adopted(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "redis").mkdir(parents=True, mode=0o700)
    pidfile = str(data / "redis" / "redis.pid")
    sock = data / "redis" / "redis.sock"
    _refuses_a_foreign_redis_at(sock, data, tmp_path / "foreign", "--pidfile", pidfile)


def test_our_own_server_is_still_adopted_at_the_fallback_socket(deep: Path) -> None:
    server = EmbeddedRedis.start(deep)
    try:
        adopted = EmbeddedRedis.start(deep)
        assert adopted.process is None and adopted.socket == server.socket
    finally:
        server.stop()
