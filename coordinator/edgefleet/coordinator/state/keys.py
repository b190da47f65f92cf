"""The name of every Redis key the coordinator uses, under one prefix, and the schema version.

Why a module of its own: every concept module of ``state`` builds its keys here, so one place
says what is stored where (and which keys a Lua script touches), and a second coordinator on the
same Redis only needs another prefix. The schema version lives beside the names because a change
of layout is a change of these names or of what is under them.

Hash tags (Redis Cluster, issue 18): every key of one fleet carries the same hash tag, the
prefix ``{edgefleet}:``, so the whole fleet lives in one cluster slot. Why one tag per fleet and
not one per device: the writes that must be atomic span a device *and* fleet-wide indexes (the
register script touches the device hash, the last-seen index, the profile indexes, the revoked
identities and an enrollment token; a rollout's creation claims many devices at once), and a Lua
script or MULTI may only touch keys of one slot. Per-device tags would either tear those writes
or force cross-slot protocols. One slot per fleet keeps every script atomic; Cluster then brings
failover (each shard has replicas) and spreads *fleets* (prefixes) over shards, not one fleet's
devices. One Redis primary serves well over 100k heartbeats a second, so the fleet sizes this
project targets fit one slot. Every script also gets all its keys through ``KEYS`` (none is built
from ``ARGV`` inside a script): a key that depends on stored data (a device's profile, the
device an instance key enrolled as) is read first and passed in, and the script checks it still
holds, answering "retry" if it changed in between (an optimistic, WATCH-like pattern).

Schema 3 is this layout; a store written under the untagged prefix (``edgefleet:``, schema 1 or
2, standalone Redis only) is renamed key by key at first start (``FleetStore.check``): one
pipelined RENAME per key, seconds for 100k devices.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "{edgefleet}:"


@dataclass(frozen=True)
class Keys:
    """Names of every key the coordinator uses, under one prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        """Refuse a prefix without a hash tag: its keys would scatter over a cluster's slots
        and every multi-key script would fail with CROSSSLOT."""
        start = self.prefix.find("{")
        end = self.prefix.find("}", start + 1)
        if start < 0 or end <= start + 1:
            raise ValueError(f"key prefix {self.prefix!r} needs a hash tag such as '{{fleet}}:'")

    @property
    def legacy_prefix(self) -> str:
        """The prefix before hash tags (``edgefleet:``), whose keys are renamed at start."""
        return self.prefix.replace("{", "").replace("}", "")

    def device(self, device_id: str) -> str:
        """Hash with the device's record (see ``DeviceRecord``)."""
        return f"{self.prefix}device:{device_id}"

    @property
    def last_seen(self) -> str:
        """Sorted set: member = device id, score = unix time of the last heartbeat."""
        return f"{self.prefix}devices:last_seen"

    def enrollment(self, instance_key: str) -> str:
        """String: the device id an agent instance key was enrolled as (makes Register idempotent)."""
        return f"{self.prefix}enrollment:{instance_key}"

    def profile_members(self, profile: str) -> str:
        """Set of device ids with a given profile name."""
        return f"{self.prefix}profile:{profile}:devices"

    def profile_live(self, profile: str) -> str:
        """Sorted set: devices of a profile whose last report was not ``stopping``,
        score = unix time of the last heartbeat (the fleet counts' liveness index)."""
        return f"{self.prefix}profile:{profile}:live"

    @property
    def profiles(self) -> str:
        """Set: profile names that have at least one device."""
        return f"{self.prefix}profiles"

    def device_metrics(self, device_id: str) -> str:
        """Hash: metric name -> last value the device reported."""
        return f"{self.prefix}device:{device_id}:metrics"

    @property
    def events(self) -> str:
        """Stream of device events (capped), newest last."""
        return f"{self.prefix}events"

    def rollout(self, rollout_id: str) -> str:
        """String: the rollout's JSON document (with a ``version`` for compare-and-set)."""
        return f"{self.prefix}rollout:{rollout_id}"

    @property
    def rollouts(self) -> str:
        """Sorted set: rollout ids by creation time."""
        return f"{self.prefix}rollouts"

    @property
    def rollout_claims(self) -> str:
        """Hash: device id -> the rollout that last claimed it (active while that rollout is)."""
        return f"{self.prefix}rollout-claims"

    def fl_rounds(self, model: str) -> str:
        """Hash: the latest federated round of a model (round, loss, accuracy, participants...)."""
        return f"{self.prefix}fl:{model}:latest"

    @property
    def fl_models(self) -> str:
        """Set: models that ever ran federated rounds."""
        return f"{self.prefix}fl:models"

    @property
    def fl_outcomes(self) -> str:
        """Hash: outcome (completed, failed) -> rounds, over all models."""
        return f"{self.prefix}fl:outcomes"

    @property
    def fl_recorded(self) -> str:
        """Set: ``run|round|outcome`` of every round record written (a retried write is a
        no-op, so each round is counted once)."""
        return f"{self.prefix}fl:recorded"

    def fl_run(self, name: str) -> str:
        """Hash: a federated run's record: ``meta`` (the replica that submitted it), ``progress``
        (the ServerApp's own record, rewritten after every round), ``stopped``, ``init``."""
        return f"{self.prefix}fl:run:{name}"

    def fl_run_alive(self, name: str) -> str:
        """String with a short TTL, renewed by the run's ServerApp while it lives."""
        return f"{self.prefix}fl:run:{name}:alive"

    @property
    def fl_runs(self) -> str:
        """Sorted set: federated run names by creation time."""
        return f"{self.prefix}fl:runs"

    @property
    def fl_superlink(self) -> str:
        """String: the fleet's SuperLink (JSON address, tls, owner), set by the replica that
        supervises it (the rollout-lease holder) or, for an external one, by every replica."""
        return f"{self.prefix}fl:superlink"

    def enroll_token(self, token_sha256: str) -> str:
        """Hash: a limited-use enrollment token (uses left); expires with the token."""
        return f"{self.prefix}enroll-token:{token_sha256}"

    @property
    def revoked(self) -> str:
        """Set: revoked device ids."""
        return f"{self.prefix}devices:revoked"

    @property
    def revoked_identities(self) -> str:
        """Set: what a revoked device enrolled with, ``instance:<instance key>`` and
        ``key:<sha256 of its public key>``. Register refuses them; removal keeps them."""
        return f"{self.prefix}revoked:identities"

    def lease(self, name: str) -> str:
        """String: owner of a lease (e.g. which replica runs the rollout controller)."""
        return f"{self.prefix}lease:{name}"

    @property
    def schema_version(self) -> str:
        return f"{self.prefix}schema"


# 2: per-profile liveness sorted sets and the profiles set (fleet counts kept on
# write). A schema-1 store is upgraded at start by ``FleetStore.check`` (one pass
# over the devices); a schema-1 coordinator refuses a schema-2 store.
# 3: every key under the hash-tagged prefix (Redis Cluster). Schemas 1 and 2, under
# the untagged prefix, are renamed, then upgraded, at start. An older coordinator
# finds no schema key under its prefix: stop every replica before upgrading.
SCHEMA_VERSION = "3"
UPGRADABLE_SCHEMAS = ("1", "2")
