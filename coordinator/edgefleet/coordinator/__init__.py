"""The edgefleet coordinator: registry, state in Redis, admin and device gRPC services."""
