"""Can this device fine-tune the run's LoRA adapters at all? Asked in the query, before any base.

Why in the query: a device whose memory budget cannot hold one LoRA training step even at
batch 1 fails every train round of the run (``lora_fine_tune`` raises MemoryError), and if its
cache lacked the base it was sent the whole base first, for nothing. The ServerApp's query
names the model's sizes (``lm-base``: ``weights``, ``adapters``, ``base``); the device answers
with :func:`unfit_reason` against its own budget, the same formula and the same budget its
train handler uses (:func:`lora_step_bytes`, :func:`budget`), so the query's verdict and the
round's are one decision, made before anything heavy travels.

torch-free: the ``query`` handler imports this in every per-message ClientApp process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flwr.app import RecordDict

from edgefleet.agent.fl.lm_base_cache import held
from edgefleet.fl.budget import DEFAULT_RAM_FRACTION
from edgefleet.fl.contract import Node, Record

__all__ = ["budget", "lora_facts", "lora_step_bytes", "unfit_reason"]


def lora_step_bytes(
    weights: int, adapters: int, *, dim: int, layers: int, heads: int, mlp_ratio: int,
    batch: int, context: int,
) -> int:  # fmt: skip
    """fp32 bytes of one training step: the model's weights once (``weights``: frozen base and
    adapters), adapters with gradient and two AdamW moments, and the activations autograd
    keeps (~12 ``dim``-wide tensors a block, the 4x MLP hidden, the attention map and the
    logits per position)."""
    per_position = layers * (12 * dim + 2 * mlp_ratio * dim + heads * context) + 2 * 256
    return 4 * (weights + 4 * adapters + batch * context * per_position)


def budget(node_config: Mapping[str, Any]) -> int:
    """Bytes one training step may use on this device (0: no limit known)."""
    ram = int(float(node_config.get(Node.RAM_BYTES, 0) or 0))
    fraction = float(node_config.get(Node.BUDGET_FRACTION, DEFAULT_RAM_FRACTION))
    return int(ram * fraction)


def unfit_reason(asked: Mapping[str, Any], node_config: Mapping[str, Any]) -> str | None:
    """One line saying why this device cannot train the run's LoRA at batch 1, or None.

    None too when the query does not size the model (an older ServerApp) or the device knows
    no budget: the round itself still checks, as before."""
    limit = budget(node_config)
    try:
        weights, adapters = int(asked["weights"]), int(asked["adapters"])
        base = json.loads(str(asked["base"]))
        need = lora_step_bytes(
            weights, adapters, dim=int(base["dim"]), layers=int(base["layers"]),
            heads=int(base["heads"]), mlp_ratio=int(base["mlp_ratio"]), batch=1,
            context=int(base["context"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None
    if not limit or need <= limit:
        return None
    return f"LoRA fine-tuning needs {need} B at batch 1, budget is {limit} B"


def lora_facts(
    asked: Mapping[str, Any], node_config: Mapping[str, Any], state: RecordDict | None
) -> dict[str, str]:
    """The query reply's LoRA facts: ``lm-lora-unfit`` (why), else ``lm-base-state`` for a
    device with a base cache (:func:`~.lm_base_cache.held`); a device left out of the run is
    sent no base, so whether it holds one is not asked."""
    unfit = unfit_reason(asked, node_config)
    if unfit is not None:
        return {Record.LM_LORA_UNFIT: unfit}
    base = held(str(asked.get("sha256", "")), node_config, state)
    return {Record.LM_BASE_STATE: base} if base is not None else {}
