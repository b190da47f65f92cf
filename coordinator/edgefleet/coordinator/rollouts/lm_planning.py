"""Planning a language model's rollout: each device's LM variant *and its context limit*.

Why beside :mod:`.planning` rather than inside classifier selection: an LM variant fits a
device only up to a context length (the KV cache grows with every position), so what a rollout
must carry to each device is the pair LM selection picked (:mod:`edgefleet.coordinator.lm_explain`):
the variant and the longest context the device holds, which travels to the agent in the
desired state (``DesiredState.context_limit``) so it never grows a cache past its RAM or its
decode-speed budget. Devices no variant fits (every microcontroller) are skipped with
selection's reason, as classifier rollouts skip devices that fit nothing. Pure functions, no I/O.

A fine-tune shipped as LoRA adapter variants (:mod:`edgefleet.modelops.lm_adapter_variant`:
each names its base variant as ``parent``) is small only against that parent: an int4-g64
device handed the int4-g32 adapter variant would download it whole. So when the device runs
the parent of an adapter variant that selection would take as well (perplexity within the
tolerance, no shorter context), that one is planned, and the reason says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from edgefleet.coordinator.lm_explain import explain_lm
from edgefleet.coordinator.lm_selection import LMPolicy, LMSelection
from edgefleet.coordinator.rollouts.document import PlannedDevice, SkippedDevice
from edgefleet.coordinator.rollouts.planning import in_wave_order
from edgefleet.coordinator.state.model import DeviceRecord

__all__ = ["plan_lm_devices", "select_lm_device", "select_lm_devices"]


def select_lm_devices(
    records: Sequence[DeviceRecord],
    manifests: Sequence[tuple[str, Mapping[str, Any]]],
    policy: LMPolicy | None = None,
) -> tuple[list[tuple[DeviceRecord, LMSelection]], list[SkippedDevice]]:
    """LM selection per device: those with a winner, and the rest with selection's reason.

    Raises ``ValueError``/``KeyError``/``TypeError`` for a malformed LM manifest."""
    chosen: list[tuple[DeviceRecord, LMSelection]] = []
    skipped: list[SkippedDevice] = []
    for record in records:
        selection = select_lm_device(record, manifests, policy)
        if selection.winner is None:
            skipped.append(SkippedDevice(record.id, record.name, selection.reason))
        else:
            chosen.append((record, selection))
    return chosen, skipped


def select_lm_device(
    record: DeviceRecord,
    manifests: Sequence[tuple[str, Mapping[str, Any]]],
    policy: LMPolicy | None = None,
) -> LMSelection:
    """LM selection for one device, keeping the adapter variant of what it runs (what a
    rollout plans and what ``devices explain`` says)."""
    selection = explain_lm(record.profile, manifests, policy)
    parents = {i: str(m.get("parent", "")) for i, m in manifests if "adapter" in m}
    if not parents:
        return selection
    return _keep_held_parent(record, selection, parents, policy or LMPolicy())


def _keep_held_parent(
    record: DeviceRecord, selection: LMSelection, parents: Mapping[str, str], policy: LMPolicy
) -> LMSelection:
    """``selection`` with the adapter variant whose parent the device runs as the winner,
    when selection would take it as well (see the module docstring)."""
    winner, held = selection.winner, record.active_variant
    if winner is None or not held or parents.get(winner.facts.id) == held:
        return selection
    fits = [v for v in selection.verdicts if v.fits]
    best = min(v.facts.perplexity for v in fits)
    for v in fits:
        if (
            parents.get(v.facts.id) == held
            and v.facts.perplexity <= best * (1 + policy.perplexity_tolerance)
            and v.context_limit >= winner.context_limit
        ):
            why = (
                f"; kept {v.facts.recipe} over {winner.facts.recipe}: the device runs its "
                "parent, so its adapters ship as a delta"
            )
            return replace(selection, winner=v, reason=selection.reason + why)
    return selection


def plan_lm_devices(
    rollout_id: str,
    chosen: Sequence[tuple[DeviceRecord, LMSelection]],
    fractions: Sequence[float],
) -> list[PlannedDevice]:
    """Each selected device with its LM variant and context limit, placed in its wave (the
    same stable order as a classifier rollout)."""
    devices = []
    for (record, selection), wave in in_wave_order(rollout_id, chosen, fractions):
        winner = selection.winner
        assert winner is not None and winner.runtime is not None
        devices.append(
            PlannedDevice(
                device_id=record.id,
                name=record.name,
                profile=record.profile.name,
                wave=wave,
                variant=winner.facts.id,
                recipe=winner.facts.recipe,
                runtime=winner.runtime,
                variant_bytes=winner.facts.bundle_bytes,
                predicted_latency_ms=0.0,  # an LM is judged on its generation gates instead
                previous=replace(record.desired, generation=0),
                context_limit=winner.context_limit,
                predicted_decode_tok_s=winner.predicted_decode_tok_s or 0.0,
            )
        )
    return devices
