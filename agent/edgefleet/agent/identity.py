"""The agent's identity, kept in its state dir so a restart is the same device.

Written atomically (temp file, fsync, rename) with mode 0600: a crash mid-write
leaves the previous identity, never a torn file, and the credential is readable
only by the agent's user. The ``instance_key`` is created before the first
Register call, so a retry after a lost reply re-enrols the same device instead
of creating a twin.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from edgefleet.fsutil import atomic_write

IDENTITY_FILE = "identity.json"


class IdentityError(RuntimeError):
    """The identity file exists but cannot be used."""


@dataclass(frozen=True)
class Identity:
    instance_key: str
    coordinator: str
    device_id: str = ""
    credential: str = ""
    bundle_public_keys: tuple[str, ...] = ()
    device_endpoint: str = ""  # where calls after Register go ("" = the coordinator address)
    # every replica's device endpoint as the coordinator last listed them (failover order);
    # persisted so an agent restarted while its replica is down still knows the others
    device_endpoints: tuple[str, ...] = ()

    @property
    def enrolled(self) -> bool:
        return bool(self.device_id and self.credential)


def new_instance_key() -> str:
    return secrets.token_hex(16)


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state dir mode 0700, or tighten an existing one to 0700.

    Why: it holds the device's credential, private key and telemetry; files a
    component creates with the default umask must still not be readable by other
    local users. An existing dir is fixed too, so upgraded devices are covered.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if stat.S_IMODE(state_dir.stat().st_mode) != 0o700:
            os.chmod(state_dir, 0o700)
    except OSError as exc:
        raise IdentityError(
            f"cannot make the state dir {state_dir} private (0700): {exc.strerror or exc}; "
            "it must be a directory this user owns"
        ) from None


def load_identity(state_dir: Path) -> Identity | None:
    path = state_dir / IDENTITY_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return Identity(
            instance_key=str(data["instance_key"]),
            coordinator=str(data.get("coordinator", "")),
            device_id=str(data.get("device_id", "")),
            credential=str(data.get("credential", "")),
            bundle_public_keys=tuple(str(k) for k in data.get("bundle_public_keys", ())),
            device_endpoint=str(data.get("device_endpoint", "")),
            device_endpoints=tuple(str(e) for e in data.get("device_endpoints", ())),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"{path} is unreadable ({exc}); move it away to re-enrol") from exc


def save_identity(state_dir: Path, identity: Identity) -> None:
    ensure_state_dir(state_dir)
    path = state_dir / IDENTITY_FILE
    atomic_write(path, json.dumps(asdict(identity)), mode=0o600)
