"""Peak activation memory: a layer-by-layer arena plan, the number an MCU runtime must reserve.

The plan itself is :mod:`edgefleet.arena` (TFLite Micro's greedy planner: lifetimes,
largest-first placement at the lowest free offset, plus the lower bound so the planner's waste
is visible), the same planner the ``mcu-sim`` runtime sizes its SRAM arena with. This module
only turns a float ONNX graph at batch 1 into tensor lifetimes.

Shape-only ops (Reshape, Flatten, ...) and element-wise activations that directly follow their
only producer (ReLU after Conv) are computed in place, as every embedded runtime fuses them.
"""

from __future__ import annotations

import onnx

from edgefleet.arena import ArenaPlan, Buffer, Lifetimes
from edgefleet.modelops.onnx_export import static_shapes

__all__ = ["Buffer", "MemoryPlan", "plan_memory"]

_ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
_INPLACE_OPS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "BatchNormalization"}
)


#: The plan of a float graph is the shared arena plan (the name model ops always used).
MemoryPlan = ArenaPlan


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
    lifetimes = Lifetimes()

    def define(name: str, step: int) -> None:
        shape = shapes.get(name)
        if shape is None:
            raise ValueError(f"memory planner: no static shape for tensor {name!r}")
        lifetimes.define(name, step, _numel(shape) * bytes_per_element)

    for inp in model.graph.input:
        if inp.name not in consts:
            define(inp.name, 0)
    for index, node in enumerate(model.graph.node):
        data_inputs = [i for i in node.input if i and i not in consts]
        for i in data_inputs:
            lifetimes.read(i, index)
        src = data_inputs[0] if data_inputs else None
        aliased = node.op_type in _ALIAS_OPS or (
            node.op_type in _INPLACE_OPS and src is not None and consumers.get(src, 0) == 1
        )
        for o in node.output:
            if aliased and src is not None:
                lifetimes.alias(o, src)
            else:
                define(o, index)
    end = len(model.graph.node)
    for out in model.graph.output:
        lifetimes.keep_until(out.name, end)
    return lifetimes.plan(end)
