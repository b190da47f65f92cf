"""A replica may serve only the fleet identity the fleet's Redis records.

Why: a replica started with another CA or signing key would hand devices certificates the other
replicas refuse, and bundles agents enrolled elsewhere cannot verify -- failures that show up
later, far from their cause. So the first replica records the identity (the CA certificate's
sha256 and the signing public key, never a secret) and every later one compares at start and
refuses with one line. A signing-key rotation is the one deliberate change
(``--rotate-signing-key``; see ``edgefleet.fleet_dir`` for the steps).
"""

from __future__ import annotations

import logging

from edgefleet.coordinator.state.fleet_identity import FleetIdentityState
from edgefleet.fleet_dir import FleetIdentity, FleetIdentityError, TrustedKeys

__all__ = ["check_fleet_record"]

log = logging.getLogger(__name__)


async def check_fleet_record(
    state: FleetIdentityState, identity: FleetIdentity, trusted: TrustedKeys, *, rotate: bool
) -> None:
    """Refuse (FleetIdentityError, one line) a replica whose identity is not its fleet's.

    The first replica on a fresh Redis records its identity; every later one must match it.
    A different signing key is accepted only with ``rotate`` and only if this replica still
    trusts the recorded key (so agents keep accepting bundles signed before the rotation).
    """
    mine = identity.record()
    found = await state.claim_fleet_identity(mine)
    if found == mine:
        return
    ca_found, ca_mine = found.get("ca_sha256", ""), mine["ca_sha256"]
    if ca_found and ca_mine and ca_found != ca_mine:
        raise FleetIdentityError(
            f"this replica's CA (sha256 {ca_mine[:16]}) is not the fleet's "
            f"({ca_found[:16]}, recorded in Redis): start it with the fleet's --fleet-dir"
        )
    key_found = found.get("signing_key", "")
    if key_found != mine["signing_key"]:
        if not rotate:
            raise FleetIdentityError(
                f"this replica's bundle signing key {mine['signing_key'][:16]} is not the "
                f"fleet's {key_found[:16]} (recorded in Redis): start it with the fleet's "
                "--fleet-dir, or rotate with --rotate-signing-key"
            )
        if key_found not in trusted.current():
            raise FleetIdentityError(
                f"--rotate-signing-key: list the fleet's current key {key_found[:16]}... in "
                f"{identity.trusted_path} first, so agents keep trusting what it signed"
            )
    new = {"ca_sha256": ca_mine or ca_found, "signing_key": mine["signing_key"]}
    if not await state.replace_fleet_identity(found, new):
        raise FleetIdentityError("another replica changed the fleet identity meanwhile; retry")
    if key_found != mine["signing_key"]:
        log.warning(
            "ROTATED the fleet's bundle signing key %s -> %s",
            key_found[:16],
            mine["signing_key"][:16],
        )
