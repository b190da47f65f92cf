"""The coordinator's state in Redis: one package owns every key and every multi-key write.

Why one package: the coordinator is stateless beyond Redis, so several replicas may update the
same device at once. Keeping every key name and every multi-key write here (each write a single
Lua script, atomic on the server) is what guarantees that state never tears: a device is either
fully registered (hash + liveness indexes + profile index + enrollment key) or absent.

- ``keys``: the name of every key, under one prefix, and the schema version;
- ``model``: the plain types callers see (``Desired``, ``DeviceRecord``, ``TelemetryIn``,
  ``FederatedRound``, ...) and the store's errors; no redis import;
- ``codec``: a device record as hash fields and back;
- one module per concept, each with its keys' scripts and methods: ``devices``, ``liveness``
  (heartbeats, fleet counts), ``telemetry``, ``rollouts`` (desired state, rollout documents,
  claims), ``leases``, ``fl_rounds``, ``revocation`` (enrollment tokens, revoked identities);
- ``store``: ``FleetStore``, composed of those parts (``base.StateBase`` under them all).

Import ``FleetStore`` from ``state.store`` and the types from ``state.model``; this file imports
nothing, so reading the types does not load redis.
"""
