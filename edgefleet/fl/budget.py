"""How much memory fine-tuning needs on a device (shared by the ServerApp and the ClientApp).

The ServerApp uses it to pick each device's HeteroFL width, the ClientApp to shrink its batch
or refuse a model that would not fit -- the same formula on both sides, so they agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["training_bytes", "widest_activation"]


def widest_activation(shapes: Iterable[Sequence[int]]) -> int:
    """Largest per-sample activation: widest layer x 8x8 pixels for conv nets, x 1 for MLPs."""
    shapes = [tuple(s) for s in shapes if len(s) >= 1]
    spatial = 64 if any(len(s) == 4 for s in shapes) else 1
    return max(int(s[0]) for s in shapes) * spatial


def training_bytes(num_params: int, batch_size: int, widest_activation: int) -> int:
    """Peak fp32 training memory: weights + grads + momentum, plus activations kept for backprop."""
    return 4 * (3 * num_params + 2 * batch_size * widest_activation)
