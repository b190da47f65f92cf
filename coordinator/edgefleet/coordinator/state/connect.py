"""A Redis client from a URL: one server, a Redis Cluster, or a master found through Sentinel.

Why a module of its own: the coordinator (and the tools that record federated rounds) accept one
``--redis-url``, and which redis-py client it means is decided by its scheme alone, here:

- ``redis://``, ``rediss://``, ``unix://``: one server, through a *blocking* pool (under a burst,
  calls queue for a connection instead of failing with "Too many connections");
- ``redis+cluster://[user:password@]host:port[,host:port...][/0]`` (``rediss+cluster://`` for
  TLS): ``redis.asyncio.cluster.RedisCluster``, seeded with every listed node so a start does not
  depend on one of them being up; it follows MOVED/ASK redirections and failovers itself;
- ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``
  (``rediss+sentinel://`` for TLS to the master): the master of ``service`` as the sentinels name
  it, re-resolved after a failover. The credentials are the master's; the sentinels are asked
  without (set ``EDGEFLEET_SENTINEL_PASSWORD`` when they require one).

Every key of a fleet shares one hash tag (see ``keys``), so the cluster client sends each script
and MULTI to the one node that owns the fleet's slot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeAlias, cast
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

RedisClient: TypeAlias = aioredis.Redis | RedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PASSWORD_ENV = "EDGEFLEET_SENTINEL_PASSWORD"
MAX_CONNECTIONS = 64
POOL_TIMEOUT_SECONDS = 10.0


class RedisUrlError(ValueError):
    """A ``--redis-url`` this module cannot make a client of (one line, no secret in it)."""


@dataclass(frozen=True)
class MultiHostUrl:
    """The parts of a cluster or sentinel URL: ``scheme://[user:pass@]h:p,h:p/path``."""

    scheme: str
    username: str | None
    password: str | None
    nodes: tuple[tuple[str, int], ...]
    path: tuple[str, ...]

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")


def kind(url: str) -> str:
    """``cluster``, ``sentinel`` or ``single``: which client a URL asks for."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    if scheme in SENTINEL_SCHEMES:
        return "sentinel"
    return "single"


def parse_multi_host(url: str) -> MultiHostUrl:
    """Split a cluster/sentinel URL; ``RedisUrlError`` naming what is wrong (never the password)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise RedisUrlError("a Redis URL needs a scheme, e.g. redis+cluster://host:port")
    userinfo, at, hostpart = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts, _, path = hostpart.partition("/")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.strip("[]")
        if not colon or not host or not port.isdigit():
            raise RedisUrlError(f"{scheme}:// needs host:port,host:port,... got {item.strip()!r}")
        nodes.append((host, int(port)))
    return MultiHostUrl(
        scheme.lower(), username, password, tuple(nodes), tuple(p for p in path.split("/") if p)
    )


def connect(url: str, *, max_connections: int = MAX_CONNECTIONS) -> RedisClient:
    """A client for ``url`` with ``decode_responses=True`` (the store keeps text only).

    Nothing is contacted yet: ``FleetStore.check`` is the first call, and reports an
    unreachable server as one line.
    """
    which = kind(url)
    if which == "cluster":
        return _cluster(parse_multi_host(url), max_connections)
    if which == "sentinel":
        return _sentinel(parse_multi_host(url), max_connections)
    try:
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            decode_responses=True,
            health_check_interval=30,
            max_connections=max_connections,
            timeout=POOL_TIMEOUT_SECONDS,
        )
    except ValueError as exc:
        raise RedisUrlError(f"bad Redis URL: {exc}") from None
    return aioredis.Redis.from_pool(pool)


def _cluster(u: MultiHostUrl, max_connections: int) -> RedisCluster:
    if u.path and u.path != ("0",):
        raise RedisUrlError("a Redis Cluster has only database 0 (drop the /N from the URL)")
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in u.nodes],
        username=u.username,
        password=u.password,
        ssl=u.tls,
        decode_responses=True,
        health_check_interval=30,
        max_connections=max_connections,
    )


def _sentinel(u: MultiHostUrl, max_connections: int) -> aioredis.Redis:
    if not u.path:
        raise RedisUrlError(
            "redis+sentinel:// needs the service name: HOST:PORT/SERVICE or .../SERVICE/DB"
        )
    service = u.path[0]
    db = u.path[1] if len(u.path) > 1 else "0"
    if not db.isdigit():
        raise RedisUrlError(f"redis+sentinel:// database must be a number, got {db!r}")
    secret = os.environ.get(SENTINEL_PASSWORD_ENV)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(u.nodes),
        sentinel_kwargs={"password": secret} if secret else {},
        socket_timeout=5.0,
    )
    master = sentinel.master_for(
        service,
        redis_class=aioredis.Redis,
        username=u.username,
        password=u.password,
        db=int(db),
        ssl=u.tls,
        decode_responses=True,
        health_check_interval=30,
        max_connections=max_connections,
    )
    return cast(aioredis.Redis, master)
