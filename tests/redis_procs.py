"""Real ``redis-server`` processes a test owns: one server it may stop, freeze or kill, a
3-node Redis Cluster, and a Sentinel watching a master (issue 18).

Why not the session's ``redis_server`` fixture: these tests stop, SIGSTOP or restart the
server, or need cluster/sentinel modes, and must not disturb the tests sharing that one.
Every process runs from a temporary directory with no persistence and is killed at the end.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.conftest import free_port, wait_for
from tests.prereqs import require_binaries


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too: an ephemeral
    port above 55535 has no bus port, and such a node never joins (or never starts)."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class RedisProc:
    """One redis-server on 127.0.0.1:``port``, restartable on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProc:
        """Start on ``port``; if that port was taken meanwhile (the server exits), on another."""
        require_binaries("redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis.log"
        for _ in range(3):
            self.proc = subprocess.Popen(
                [
                    *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--dir", str(self.workdir), "--save", "", "--appendonly", "no"),
                    *("--logfile", str(log), *self.extra),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            proc = self.proc

            def settled(proc: subprocess.Popen[bytes] = proc) -> bool:
                return proc.poll() is not None or self.answers()

            wait_for(settled, 30, f"redis-server on {self.port}")
            if proc.poll() is None:
                return self
            self.port = cluster_port() if "--cluster-enabled" in self.extra else free_port()
        raise AssertionError(f"redis-server would not start: {log.read_text()[-600:]}")

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot die otherwise
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class RedisCluster:
    """Three masters (no replicas) on loopback, all 16384 slots assigned."""

    nodes: list[RedisProc]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def flush(self) -> None:
        for n in self.nodes:
            with redis.Redis(port=n.port) as client:
                client.flushall()


@contextlib.contextmanager
def redis_cluster(workdir: Path) -> Iterator[RedisCluster]:
    """Start three ``--cluster-enabled`` servers and join them with ``redis-cli --cluster``."""
    require_binaries("redis-server", "redis-cli")
    nodes: list[RedisProc] = []
    try:
        for i in range(3):
            d = workdir / f"node{i}"
            nodes.append(
                RedisProc(
                    d,
                    port=cluster_port(),
                    extra=("--cluster-enabled", "yes", "--cluster-config-file", str(d / "n.conf")),
                ).start()
            )
        subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ready() -> bool:
            for n in nodes:
                with redis.Redis(port=n.port, decode_responses=True) as client:
                    if client.cluster("INFO").get("cluster_state") != "ok":
                        return False
            return True

        wait_for(ready, 30, "cluster_state:ok on every node")
        yield RedisCluster(nodes)
    finally:
        for n in nodes:
            n.kill()


@contextlib.contextmanager
def redis_sentinel(workdir: Path, service: str = "fleet") -> Iterator[tuple[RedisProc, str]]:
    """A master and one sentinel monitoring it as ``service``; yields (master, sentinel URL)."""
    require_binaries("redis-server")
    master = RedisProc(workdir / "master").start()
    port = free_port()
    conf = workdir / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor {service} 127.0.0.1 {master.port} 1\n"
    )
    sentinel = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def knows_master() -> bool:
            try:
                with redis.Redis(port=port, decode_responses=True) as client:
                    found = client.execute_command("SENTINEL", "get-master-addr-by-name", service)
                    return bool(found) and int(found[1]) == master.port
            except redis.RedisError:
                return False

        wait_for(knows_master, 10, "the sentinel to know its master")
        yield master, f"redis+sentinel://127.0.0.1:{port}/{service}"
    finally:
        sentinel.kill()
        sentinel.wait(10)
        master.kill()
