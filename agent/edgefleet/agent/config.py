"""What an agent is started with (its command line, as one value), and the error it stops on.

Kept apart from ``session.py`` so that the session's helpers (``work.py``) can take the config
without importing the session that owns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.agent.backoff import Backoff
from edgefleet.profiles import DeviceProfile

if TYPE_CHECKING:
    from edgefleet.agent.workload import LocalDataSpec

__all__ = ["AgentConfig", "FatalAgentError"]


class FatalAgentError(RuntimeError):
    """A condition retrying cannot fix (rejected enrollment token, invalid profile)."""


@dataclass
class AgentConfig:
    coordinator: str
    profile: DeviceProfile
    state_dir: Path
    name: str
    enroll_token: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    backoff: Backoff = field(default_factory=Backoff)
    telemetry_max_records: int = 10_000
    simulate_link: bool = False  # read artifacts at the profile's link_kbps (simulated devices)
    inference_port: int | None = None  # serve InferenceService on 127.0.0.1 (0: any free port)
    workload_rate: float = 0.0  # simulated devices: replay local data at this many req/s
    local_data: LocalDataSpec | None = None
    finetune_scope: str = ""  # "" = never; else fine-tune once on local data after activation
    ca_cert: bytes | None = None  # the coordinator's CA (TLS); None = plaintext (--insecure)
    federation: bool = True  # run a SuperNode when the coordinator names a SuperLink
