"""A small synchronous client of the admin service, for the CLI and scripts.

It turns every gRPC failure into ``AdminClientError`` with one line a person
can act on ("cannot reach the coordinator at ..."), so the CLI never prints a
traceback for a dead coordinator or a wrong token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from edgefleet.v1 import admin_pb2, admin_pb2_grpc

T = TypeVar("T")
DEFAULT_TIMEOUT = 10.0


class AdminClientError(RuntimeError):
    """A failed admin call; ``str()`` is one line for the operator."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class AdminClient:
    def __init__(
        self,
        address: str,
        token: str,
        timeout: float = DEFAULT_TIMEOUT,
        ca_cert: bytes | None = None,
    ) -> None:
        """``ca_cert``: the coordinator's CA (PEM) for TLS; None talks plaintext to a
        coordinator started with ``--insecure``."""
        if not token:
            raise AdminClientError(
                "no admin token: set EDGEFLEET_ADMIN_TOKEN or pass --admin-token "
                "(the coordinator prints where it keeps its token)"
            )
        self.address = address
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),)
        if ca_cert is None:
            self._channel = grpc.insecure_channel(address)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=ca_cert)
            self._channel = grpc.secure_channel(address, creds)
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            code: grpc.StatusCode = err.code()
            details: str = err.details() or ""
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                if "store unavailable" in details:
                    raise AdminClientError(
                        f"coordinator at {self.address}: {details}", code
                    ) from None
                raise AdminClientError(
                    f"cannot reach the coordinator at {self.address} (is it running? "
                    "set --coordinator or EDGEFLEET_COORDINATOR)",
                    code,
                ) from None
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise AdminClientError(f"not allowed: {details}", code) from None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise AdminClientError(
                    f"the coordinator rejected the admin token ({details})", code
                ) from None
            raise AdminClientError(details or code.name.lower(), code) from None

    def list_devices(
        self, profile: str = "", status: int = admin_pb2.DEVICE_STATUS_UNSPECIFIED
    ) -> list[admin_pb2.Device]:
        """Every matching device: follows ListDevices' pages to the last one.

        Sorted by profile, name and id (what operators scan by); the server pages by id.
        """
        devices: list[admin_pb2.Device] = []
        token = ""
        while True:
            request = admin_pb2.ListDevicesRequest(
                profile=profile,
                status=status,  # type: ignore[arg-type]
                page_token=token,
            )
            reply = self._call(self._stub.ListDevices, request)
            devices.extend(reply.devices)
            if not reply.next_page_token or reply.next_page_token == token:
                break
            token = reply.next_page_token
        return sorted(devices, key=lambda d: (d.profile.name, d.name, d.id))

    def get_device(self, device_id: str) -> admin_pb2.Device:
        reply = self._call(self._stub.GetDevice, admin_pb2.GetDeviceRequest(device_id=device_id))
        device: admin_pb2.Device = reply.device
        return device

    def remove_device(self, device_id: str) -> None:
        self._call(self._stub.RemoveDevice, admin_pb2.RemoveDeviceRequest(device_id=device_id))

    def fleet_summary(self) -> admin_pb2.GetFleetSummaryResponse:
        reply: admin_pb2.GetFleetSummaryResponse = self._call(
            self._stub.GetFleetSummary, admin_pb2.GetFleetSummaryRequest()
        )
        return reply

    def explain_device(
        self, device_id: str, model: str, accuracy_tolerance: float = 0.0, slo_ms: float = 0.0
    ) -> admin_pb2.ExplainDeviceResponse:
        request = admin_pb2.ExplainDeviceRequest(
            device_id=device_id,
            model=model,
            accuracy_tolerance=accuracy_tolerance,
            latency_slo_ms=slo_ms,
        )
        reply: admin_pb2.ExplainDeviceResponse = self._call(self._stub.ExplainDevice, request)
        return reply

    def create_rollout(self, request: admin_pb2.CreateRolloutRequest) -> admin_pb2.Rollout:
        reply: admin_pb2.RolloutResponse = self._call(self._stub.CreateRollout, request)
        return reply.rollout

    def get_rollout(self, rollout_id: str) -> admin_pb2.Rollout:
        request = admin_pb2.GetRolloutRequest(rollout_id=rollout_id)
        reply: admin_pb2.RolloutResponse = self._call(self._stub.GetRollout, request)
        return reply.rollout

    def list_rollouts(self) -> list[admin_pb2.Rollout]:
        reply: admin_pb2.ListRolloutsResponse = self._call(
            self._stub.ListRollouts, admin_pb2.ListRolloutsRequest()
        )
        return list(reply.rollouts)

    def control_rollout(self, rollout_id: str, action: str) -> admin_pb2.Rollout:
        request = admin_pb2.ControlRolloutRequest(rollout_id=rollout_id, action=action)
        reply: admin_pb2.RolloutResponse = self._call(self._stub.ControlRollout, request)
        return reply.rollout

    def create_enrollment_token(
        self, uses: int, ttl_seconds: float
    ) -> admin_pb2.CreateEnrollmentTokenResponse:
        request = admin_pb2.CreateEnrollmentTokenRequest(uses=uses, ttl_seconds=ttl_seconds)
        reply: admin_pb2.CreateEnrollmentTokenResponse = self._call(
            self._stub.CreateEnrollmentToken, request
        )
        return reply

    def revoke_device(self, device_id: str) -> None:
        self._call(self._stub.RevokeDevice, admin_pb2.RevokeDeviceRequest(device_id=device_id))


def wait_until_online(
    client: AdminClient, names: set[str], timeout: float, label: str = "devices online"
) -> list[admin_pb2.Device]:
    """Poll the coordinator until every named device is online; show a progress bar."""
    from rich.console import Console
    from rich.progress import Progress

    deadline = time.monotonic() + timeout
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=len(names))
        while True:
            devices = [d for d in client.list_devices() if d.name in names]
            online = [d for d in devices if d.status == admin_pb2.DEVICE_STATUS_ONLINE]
            progress.update(task, completed=len({d.name for d in online}))
            if {d.name for d in online} >= names:
                return devices
            if time.monotonic() > deadline:
                missing = sorted(names - {d.name for d in online})
                raise AdminClientError(
                    f"{len(missing)} device(s) not online after {timeout:.0f}s: "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
                )
            time.sleep(0.25)
