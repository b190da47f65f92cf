"""Wire <-> plain conversions more than one service needs: timestamps, agent states,
device status, desired state and the device view."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from edgefleet.coordinator.registry import DeviceStatus, DeviceView
from edgefleet.coordinator.state.model import Desired
from edgefleet.coordinator.validation import AGENT_STATES
from edgefleet.v1 import admin_pb2, device_pb2
from edgefleet.wire import profile_to_proto

STATE_FROM_WIRE = {
    device_pb2.AGENT_STATE_STARTING: "starting",
    device_pb2.AGENT_STATE_READY: "ready",
    device_pb2.AGENT_STATE_DEGRADED: "degraded",
    device_pb2.AGENT_STATE_STOPPING: "stopping",
}
_STATE_TO_WIRE = {v: k for k, v in STATE_FROM_WIRE.items()}
_STATUS_TO_WIRE = {
    DeviceStatus.ONLINE: admin_pb2.DEVICE_STATUS_ONLINE,
    DeviceStatus.OFFLINE: admin_pb2.DEVICE_STATUS_OFFLINE,
}
STATUS_FROM_WIRE = {v: k for k, v in _STATUS_TO_WIRE.items()}
assert set(_STATE_TO_WIRE) == set(AGENT_STATES)


def timestamp(unix: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix * 1e9))
    return ts


def desired_to_proto(d: Desired) -> device_pb2.DesiredState:
    return device_pb2.DesiredState(
        generation=d.generation,
        variant_id=d.variant,
        model=d.model,
        variant_bytes=d.variant_bytes,
        rollout_id=d.rollout,
        runtime=d.runtime,
        context_limit=d.context_limit,
    )


def device_to_proto(view: DeviceView) -> admin_pb2.Device:
    r = view.record
    return admin_pb2.Device(
        id=r.id,
        name=r.name,
        profile=profile_to_proto(r.profile),
        status=_STATUS_TO_WIRE[view.status],
        registered_at=timestamp(r.registered_at),
        last_seen=timestamp(r.last_seen),
        agent_version=r.agent_version,
        labels=r.labels,
        reported_state=_STATE_TO_WIRE.get(r.reported_state, device_pb2.AGENT_STATE_UNSPECIFIED),
        uptime_seconds=r.uptime_seconds,
        active_variant=r.active_variant,
        desired=desired_to_proto(r.desired),
        telemetry_records=r.telemetry_records,
        telemetry_sequence=r.telemetry_sequence,
        latest_metrics=view.latest_metrics,
        previous_variant=r.previous_variant,
        failed_variant=r.failed_variant,
        failure_reason=r.failure_reason,
        benchmark=device_pb2.DeviceBenchmark(
            macs_per_second=r.benchmark_macs_per_second, method=r.benchmark_method
        ),
    )
