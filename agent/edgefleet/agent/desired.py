"""The coordinator's desired state as the agent works with it: a plain, frozen value.

The session converts the ``DesiredState`` message at the boundary
(``edgefleet.agent.session.desired_from_proto``); the reconciler, the update machine and
serving only ever see this, so a wire change touches one function.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Desired"]


@dataclass(frozen=True)
class Desired:
    """What the coordinator wants served. ``variant_id`` "" with ``generation`` > 0 means
    "serve nothing" (a rollback to no variant); generation 0 means "never assigned"."""

    generation: int = 0
    variant_id: str = ""
    runtime: str = ""  # runtime to serve it with; "" = the device's preference
    model: str = ""
    rollout_id: str = ""
    variant_bytes: int = 0
    #: a language model: the positions LM selection gave this device (0 = the manifest's)
    context_limit: int = 0
