"""The coordinator's gRPC API: the only server code that touches gRPC and wire types.

Each service converts requests to plain objects, calls the core (``registry``,
``rollouts``, ``artifacts``), and converts the answer back; every core error leaves as a
status code through :mod:`.guard`. The core below never sees a protobuf message or a
gRPC context, so it is tested without a server. ``server.py`` only assembles these
services on a ``grpc.aio`` server.

- :mod:`.device_service`: Register, Heartbeat, ReportTelemetry (called by agents)
- :mod:`.admin_service`: fleet queries, rollouts and credentials (called by the CLI)
- :mod:`.artifact_service`: variant archives streamed to agents
- :mod:`.metrics_interceptor`: every call counted and timed
- :mod:`.guard`: caller identity from metadata and TLS, core errors to status codes
- :mod:`.convert`: wire <-> plain conversions shared by the services
"""
