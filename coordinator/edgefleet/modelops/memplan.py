"""Peak activation memory: a layer-by-layer arena plan, the number an MCU runtime must reserve.

Weights live in flash; activations live in one RAM arena whose size the runtime fixes at
start-up. We compute it the way TensorFlow Lite Micro's greedy planner does: every activation
tensor gets a lifetime (from the op that writes it to the last op that reads it), tensors are
placed largest-first at the lowest arena offset that does not collide with any tensor alive at
the same time, and the arena is the highest end offset. We also report the lower bound (the
largest sum of simultaneously-live tensors), so the planner's waste is visible.

Shape-only ops (Reshape, Flatten, ...) and element-wise activations that directly follow their
only producer (ReLU after Conv) are computed in place, as every embedded runtime fuses them.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from edgefleet.modelops.onnx_export import static_shapes

__all__ = ["Buffer", "MemoryPlan", "plan_memory"]

_ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
_INPLACE_OPS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "BatchNormalization"}
)


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int
    first: int
    last: int
    offset: int


@dataclass(frozen=True)
class MemoryPlan:
    arena_bytes: int
    lower_bound_bytes: int
    buffers: tuple[Buffer, ...]


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def plan_memory(model: onnx.ModelProto, bytes_per_element: int) -> MemoryPlan:
    """Plan the activation arena of a float ONNX graph at batch 1.

    ``bytes_per_element`` is the activation width on the target (4 fp32, 2 fp16, 1 int8): an
    int8 model has the same tensors as its float graph, one byte each.
    """
    shapes = static_shapes(model)
    consts = {t.name for t in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1
    root: dict[str, str] = {}  # tensor -> the buffer it lives in

    def buf(name: str) -> str:
        while name in root:
            name = root[name]
        return name

    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for inp in model.graph.input:
        if inp.name not in consts:
            first[inp.name] = last[inp.name] = 0
    for index, node in enumerate(model.graph.node):
        data_inputs = [i for i in node.input if i and i not in consts]
        for i in data_inputs:
            owner = buf(i)
            last[owner] = max(last.get(owner, index), index)
        src = data_inputs[0] if data_inputs else None
        aliased = node.op_type in _ALIAS_OPS or (
            node.op_type in _INPLACE_OPS and src is not None and consumers.get(src, 0) == 1
        )
        for o in node.output:
            if aliased and src is not None:
                root[o] = buf(src)
            else:
                first[o] = last[o] = index
    end = len(model.graph.node)
    for out in model.graph.output:
        last[buf(out.name)] = end
    sizes: dict[str, int] = {}
    for name in first:
        shape = shapes.get(name)
        if shape is None:
            raise ValueError(f"memory planner: no static shape for tensor {name!r}")
        sizes[name] = _numel(shape) * bytes_per_element
    placed: list[Buffer] = []
    for name in sorted(first, key=lambda n: (-sizes[n], first[n], n)):
        lo, hi, size = first[name], last[name], sizes[name]
        clashes = sorted(
            (b for b in placed if b.first <= hi and lo <= b.last), key=lambda b: b.offset
        )
        offset = 0
        for b in clashes:
            if offset + size <= b.offset:
                break
            offset = max(offset, b.offset + b.size)
        placed.append(Buffer(name, size, lo, hi, offset))
    arena = max((b.offset + b.size for b in placed), default=0)
    bound = max(
        (sum(b.size for b in placed if b.first <= t <= b.last) for t in range(end + 1)), default=0
    )
    return MemoryPlan(arena, bound, tuple(sorted(placed, key=lambda b: b.first)))
