"""HeteroFL-style width slices: split a global model for narrow clients and merge them back.

A client of width ``w`` trains the network built at width ``w``; every tensor of that
network is the *leading* slice of the global tensor (first ``c_out`` output channels, first
``c_in`` input channels, ...). Aggregation averages each global element over exactly the
clients that hold it (weighted by their sample counts), so the leading channels learn from
everyone and the trailing ones from the wide devices only; elements nobody trained keep their
previous global value (Diao et al., "HeteroFL", ICLR 2021). The same rule covers updates that
leave whole tensors out (a memory-tight device that trained TinyTL's biases and head only).

Pure numpy on plain ``{name: array}`` dicts, so the math is testable without Flower or torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["HeteroFLError", "aggregate", "check_nested", "leading_slice", "slice_params"]

Arrays = dict[str, npt.NDArray[np.float32]]
Shapes = Mapping[str, tuple[int, ...]]


class HeteroFLError(ValueError):
    """A local model that is not a leading slice of the global one."""


def leading_slice(local_shape: Sequence[int]) -> tuple[slice, ...]:
    """The index that picks a tensor of ``local_shape`` from the front of a larger one."""
    return tuple(slice(0, int(n)) for n in local_shape)


def check_nested(global_shapes: Shapes, local_shapes: Shapes) -> None:
    """Refuse a local architecture whose tensors do not nest inside the global ones."""
    missing = set(local_shapes) ^ set(global_shapes)
    if missing:
        raise HeteroFLError(f"tensor names differ between widths: {sorted(missing)[:5]}")
    for name, shape in local_shapes.items():
        g = global_shapes[name]
        if len(g) != len(shape) or any(l_ > g_ for l_, g_ in zip(shape, g, strict=True)):
            raise HeteroFLError(f"{name}: local shape {tuple(shape)} does not fit in {tuple(g)}")


def slice_params(
    global_params: Mapping[str, npt.NDArray[np.float32]], local_shapes: Shapes
) -> Arrays:
    """The width-``w`` client's model: the leading slice of every global tensor."""
    check_nested({k: v.shape for k, v in global_params.items()}, local_shapes)
    return {
        k: np.array(v[leading_slice(local_shapes[k])], copy=True) for k, v in global_params.items()
    }


def aggregate(
    global_params: Mapping[str, npt.NDArray[np.float32]],
    updates: Sequence[tuple[Mapping[str, npt.NDArray[np.float32]], float]],
) -> Arrays:
    """Weighted mean of every element over the clients holding it; untouched elements stay.

    An update may omit tensors (it trained a light scope): it counts for those it holds only.
    """
    out: Arrays = {}
    for name, g in global_params.items():
        acc = np.zeros(g.shape, dtype=np.float64)
        cnt = np.zeros(g.shape, dtype=np.float64)
        for params, weight in updates:
            local = params.get(name)
            if local is None:
                continue
            if local.ndim != g.ndim or any(
                a > b for a, b in zip(local.shape, g.shape, strict=True)
            ):
                raise HeteroFLError(f"{name}: update shape {local.shape} does not fit in {g.shape}")
            idx = leading_slice(local.shape)
            acc[idx] += weight * local
            cnt[idx] += weight
        merged = np.where(cnt > 0, acc / np.maximum(cnt, 1e-12), g)
        out[name] = merged.astype(g.dtype, copy=False)
    return out
