"""The one arena planner (:mod:`edgefleet.arena`): model ops (float ONNX graphs) and the
``mcu-sim`` runtime (int8 graphs) get the same plan for the same tensors."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgefleet.agent.runtimes.mcu_graph import McuGraph, TensorInfo
from edgefleet.agent.runtimes.mcu_sim import plan_arena
from edgefleet.arena import ArenaPlan, Buffer, Lifetimes
from edgefleet.modelops.memplan import plan_memory

# x[64] -> fc -> h1[128] -> relu (in place) -> fc -> h2[64] -> fc -> y[16]: sizes are
# multiples of 16, so the MCU's 16-byte alignment changes nothing and the plans must agree.
WIDTHS = {"x": 64, "h1": 128, "h1r": 128, "h2": 64, "y": 16}


def _onnx_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32), f"w{i}")
        for i, (a, b) in enumerate([(64, 128), (128, 64), (64, 16)])
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h1r"]),
        helper.make_node("MatMul", ["h1r", "w1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        initializer=weights,
    )
    return helper.make_model(graph)


def _mcu_graph() -> McuGraph:
    tensors = {name: TensorInfo((1, n), 0.1, 0) for name, n in WIDTHS.items()}
    ops = [
        {"op": "fully_connected", "inputs": ["x"], "output": "h1"},
        {"op": "clamp", "inputs": ["h1"], "output": "h1r"},
        {"op": "fully_connected", "inputs": ["h1r"], "output": "h2"},
        {"op": "fully_connected", "inputs": ["h2"], "output": "y"},
    ]
    return McuGraph("x", "y", tensors, ops, {})


def test_model_ops_and_the_mcu_runtime_get_the_same_plan_for_the_same_tensors() -> None:
    float_plan = plan_memory(_onnx_graph(), bytes_per_element=1)
    mcu_plan = plan_arena(_mcu_graph())
    assert float_plan == mcu_plan
    # ReLU runs in place (no h1r buffer); the busiest steps hold h1 (128) with x or h2 (64).
    assert sorted(b.name for b in mcu_plan.buffers) == ["h1", "h2", "x", "y"]
    assert mcu_plan.lower_bound_bytes == 128 + 64
    assert mcu_plan.arena_bytes == 128 + 64


def test_the_planner_places_largest_first_at_the_lowest_free_offset() -> None:
    lt = Lifetimes()
    lt.define("a", 0, 10)
    lt.define("b", 1, 30)
    lt.read("a", 1)
    lt.define("c", 2, 20)
    lt.read("b", 2)
    lt.keep_until("c", 3)
    plan = lt.plan(3, align=16)
    assert plan == ArenaPlan(
        arena_bytes=64,
        lower_bound_bytes=64,
        buffers=(Buffer("a", 16, 0, 1, 32), Buffer("b", 32, 1, 2, 0), Buffer("c", 32, 2, 3, 32)),
    )
