"""The per-op MCU cycle model (edgefleet.cycles) and what selection does with it.

These check the model's *structure* -- which op costs more per MAC on which core, that more
work costs more, that a contiguous SRAM region is what an arena must fit -- never the
calibrated numbers (benchmarks/mcu.py prints those against the published results).
"""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.catalog import ALIASES, CATALOG, get_profile
from edgefleet.coordinator.latency import DeviceLatencyModel
from edgefleet.coordinator.variant_selection import VariantFacts, select
from edgefleet.coordinator.variants import facts_from_manifest
from edgefleet.cycles import (
    CORE_COSTS,
    FRONTEND_OPS,
    Core,
    CycleModelError,
    Layer,
    core_from_cpu,
    frontend_layers,
    layer_cycles,
    layers_from_json,
    layers_to_json,
    predict,
)
from edgefleet.perf import manifest_layers, mcu_core, mcu_latency_ms
from edgefleet.profiles import KIB, ProfileError, validate_profile

# One KWS DS-CNN block on its 25x5x64 map: depthwise 3x3 and pointwise 64 -> 64.
DEPTHWISE = Layer("depthwise", macs=125 * 64 * 9, outputs=125 * 64)
POINTWISE = Layer("pointwise", macs=125 * 64 * 64, outputs=125 * 64)
CONV3X3 = Layer("conv", macs=1024 * 16 * 144, outputs=1024 * 16, im2col=1024 * 144)
FC = Layer("fc", macs=64 * 12, outputs=12)
MAC_LAYERS = (DEPTHWISE, POINTWISE, CONV3X3, FC)


def per_mac(core: Core, layer: Layer) -> float:
    return layer_cycles(core, layer) / layer.macs


def test_depthwise_costs_more_per_mac_than_pointwise_and_conv_on_the_dsp_cores() -> None:
    for core in (Core.M4, Core.M33, Core.M7):
        assert per_mac(core, DEPTHWISE) > 2 * per_mac(core, POINTWISE)
        assert per_mac(core, DEPTHWISE) > per_mac(core, CONV3X3)


def test_faster_cores_take_fewer_cycles_per_mac_for_every_op_kind() -> None:
    for layer in MAC_LAYERS:
        m4, m7 = per_mac(Core.M4, layer), per_mac(Core.M7, layer)
        assert m7 < m4, layer.kind  # dual issue
        for helium in (Core.M55, Core.M85):
            assert per_mac(helium, layer) < m7, (helium, layer.kind)  # 16-lane int8 MVE


def test_same_isa_same_kernel_cost_m33_like_m4() -> None:
    assert CORE_COSTS[Core.M33].dense == CORE_COSTS[Core.M4].dense
    assert CORE_COSTS[Core.M33].depthwise == CORE_COSTS[Core.M4].depthwise


def test_every_unit_of_work_adds_cycles() -> None:
    base = Layer("conv", macs=1000, outputs=100, im2col=500)
    for core in Core:
        c = layer_cycles(core, base)
        assert layer_cycles(core, Layer("conv", macs=2000, outputs=100, im2col=500)) > c
        assert layer_cycles(core, Layer("conv", macs=1000, outputs=200, im2col=500)) > c
        assert layer_cycles(core, Layer("conv", macs=1000, outputs=100, im2col=900)) > c
        for kind in ("pool", "add", "activation", "softmax"):
            small, big = Layer(kind, elements=10), Layer(kind, elements=1000)
            assert layer_cycles(core, big) > layer_cycles(core, small) > 0


def test_a_bigger_net_predicts_longer_and_a_faster_clock_shorter() -> None:
    small = [DEPTHWISE, POINTWISE, FC]
    big = [DEPTHWISE, POINTWISE, DEPTHWISE, POINTWISE, FC]
    for core in Core:
        assert predict(core, big, 120).cycles > predict(core, small, 120).cycles
        assert predict(core, small, 480).ms < predict(core, small, 120).ms
    p = predict(Core.M4, big, 120)
    assert set(p.by_kind) == {"depthwise", "pointwise", "fc"}
    assert p.cycles == pytest.approx(sum(p.by_kind.values()))


def test_frontend_ops_add_cycles_and_unknown_ones_are_refused() -> None:
    net = [DEPTHWISE, POINTWISE]
    counts = {"window": 49 * 640, "fft": 49 * 9000, "mel": 49 * 500, "dct": 49 * 400}
    counts |= {"magnitude": 49 * 514, "sqrt": 49 * 257, "log": 49 * 40}
    assert set(counts) == set(FRONTEND_OPS)
    with_frontend = [*net, *frontend_layers(counts)]
    for core in Core:
        assert predict(core, with_frontend, 120).cycles > predict(core, net, 120).cycles
    no_logs = frontend_layers({**counts, "log": 0})
    assert (
        predict(Core.M4, no_logs, 120).cycles
        < predict(Core.M4, frontend_layers(counts), 120).cycles
    )
    with pytest.raises(CycleModelError, match="frontend op 'stft': unknown"):
        frontend_layers({"stft": 3})
    with pytest.raises(CycleModelError, match="frontend op 'fft': count must be"):
        frontend_layers({"fft": -1})


def test_bad_layers_and_clocks_are_one_clear_error() -> None:
    with pytest.raises(CycleModelError, match="op kind 'lstm': unknown"):
        Layer("lstm", macs=1)
    with pytest.raises(CycleModelError, match="conv layer: macs must be an integer >= 0"):
        Layer("conv", macs=-5)
    with pytest.raises(CycleModelError, match="clock"):
        predict(Core.M4, [FC], 0)
    assert layers_from_json(layers_to_json(MAC_LAYERS)) == MAC_LAYERS
    for bad, message in (
        ({"op": "conv"}, "expected a list"),
        ([{"macs": 3}], r"ops\[0\]: expected an object"),
        ([{"op": "conv", "flops": 3}], r"ops\[0\]: unknown field 'flops'"),
        ([{"op": "conv", "macs": "many"}], r"ops\[0\]: conv layer: macs must be"),
    ):
        with pytest.raises(CycleModelError, match=message):
            layers_from_json(bad)


def test_each_mcu_profile_names_its_core_and_an_unknown_core_is_costed_as_the_slowest() -> None:
    expected = {
        "nucleo-l4r5zi": Core.M4,
        "nucleo-h7a3zi-q": Core.M7,
        "stm32h743": Core.M7,
        "nucleo-u575zi-q": Core.M33,
        "ek-ra8m1": Core.M85,
        "esp32-s3": Core.ESP32S3,
    }
    for name, core in expected.items():
        assert core_from_cpu(get_profile(name).cpu) is core
    assert core_from_cpu("nRF5340 (Cortex-M33 128 MHz)") is Core.M33
    assert core_from_cpu("Alif E7 (Cortex-M55 400 MHz)") is Core.M55
    odd = get_profile("nucleo-l4r5zi").model_copy(update={"cpu": "RISC-V 200 MHz"})
    assert core_from_cpu(odd.cpu) is None and mcu_core(odd) is Core.M4


def test_old_profile_names_are_the_same_boards() -> None:
    for alias, board in ALIASES.items():
        a, b = get_profile(alias), get_profile(board)
        assert a.name == alias and a.model_dump(exclude={"name"}) == b.model_dump(exclude={"name"})
    assert {"cortex-m4", "cortex-m7", "esp32-s3"} <= set(CATALOG)


def test_a_region_larger_than_the_sram_is_refused_naming_the_field() -> None:
    data = get_profile("stm32h743").model_dump()
    data["sram_region_bytes"] = data["ram_bytes"] + 1
    with pytest.raises(ProfileError) as info:
        validate_profile(data)
    assert info.value.field == "sram_region_bytes"


def facts(peak: int, layers: tuple[Layer, ...] = (), macs: int = 2_000_000) -> VariantFacts:
    return VariantFacts(
        id="v", model="m", recipe="int8-static", precision="int8", bundle_bytes=60_000,
        weight_bytes=50_000, peak_memory_bytes=peak, accuracy=0.9, macs=macs,
        runtimes=("mcu-sim", "onnxruntime"), mcu_flash_bytes=60_000, layers=layers,
    )  # fmt: skip


def test_an_arena_that_fits_the_total_sram_but_not_its_largest_region_is_refused() -> None:
    h743 = get_profile("stm32h743")  # 1 MiB of SRAM, 512 KiB contiguous
    assert h743.largest_ram_region == 512 * KIB < h743.ram_bytes
    v = facts(peak=600 * KIB)
    model = DeviceLatencyModel(h743, 1e9, 1e9)
    refused = select(h743, [v], model)
    assert refused.winner is None
    failure = refused.verdicts[0].failures[0]
    assert failure.startswith("sram: needs") and "512.0 KiB contiguous (of 1.0 MiB)" in failure
    one_bank = h743.model_copy(update={"sram_region_bytes": 0})
    assert select(one_bank, [v], model).winner is not None
    # weights stay in flash: a 50 KB model with a small arena fits a 64 KiB SRAM
    tiny = get_profile("nucleo-l4r5zi").model_copy(update={"ram_bytes": 64 * KIB})
    assert select(tiny, [facts(peak=32 * KIB)], model).winner is not None


def test_selection_predicts_per_op_from_the_manifest() -> None:
    m4 = get_profile("nucleo-l4r5zi")
    model = DeviceLatencyModel(m4, 1e9, 1e9)
    macs = DEPTHWISE.macs + POINTWISE.macs
    dw_heavy = facts(8 * KIB, (DEPTHWISE, DEPTHWISE, POINTWISE), macs + DEPTHWISE.macs)
    pw_only = facts(8 * KIB, (Layer("pointwise", macs=dw_heavy.macs, outputs=8000),))
    assert model.predict_ms(dw_heavy, "mcu-sim") > model.predict_ms(pw_only, "mcu-sim")
    # the same number a runtime reporting device time computes from the manifest
    manifest: dict[str, Any] = {
        "precision": "int8",
        "metrics": {
            "weight_bytes": 1, "peak_memory_bytes": 1, "accuracy": 0.5, "macs": dw_heavy.macs,
            "ops": layers_to_json(dw_heavy.layers),
        },
    }  # fmt: skip
    read = facts_from_manifest("v", manifest)
    assert read.layers == dw_heavy.layers
    assert model.predict_ms(read, "tflm") == pytest.approx(mcu_latency_ms(m4, manifest))
    # an older manifest without per-op counts: its MACs as one pointwise layer
    old_metrics = {k: v for k, v in manifest["metrics"].items() if k != "ops"}
    old_manifest = {**manifest, "metrics": old_metrics}
    old = facts_from_manifest("v", old_manifest)
    assert [layer.kind for layer in old.layers] == ["pointwise"]
    assert model.predict_ms(old, "mcu-sim") == pytest.approx(mcu_latency_ms(m4, old_manifest))
    manifest["metrics"]["ops"] = [{"op": "winograd"}]
    with pytest.raises(CycleModelError, match="winograd"):
        facts_from_manifest("v", manifest)


def test_the_int8_graphs_layers_are_counted_by_op_kind() -> None:
    """Real exported graphs: stem conv, depthwise/pointwise blocks, residual adds, a classifier;
    ReLUs fused into the op before them, BatchNorm folded, MACs matching count_macs."""
    from edgefleet.modelops.measure import count_layers, count_macs
    from edgefleet.modelops.onnx_export import export_onnx
    from edgefleet.zoo import ArchitectureSpec, build_model

    ds = ArchitectureSpec.zoo("ds-cnn", width=0.125, input_shape=(1, 8, 8))
    graph = export_onnx(build_model(ds), ds.input_shape)
    layers = count_layers(graph)
    kinds = [layer.kind for layer in layers]
    assert kinds == ["conv", *["depthwise", "pointwise"] * 4, "pool", "fc"]
    assert sum(layer.macs for layer in layers) == count_macs(graph)
    assert layers[0].im2col == 8 * 8 * 9  # one 3x3x1 patch per output pixel
    rn = ArchitectureSpec.zoo("resnet-8", width=0.25, input_shape=(3, 8, 8))
    kinds = [layer.kind for layer in count_layers(export_onnx(build_model(rn), rn.input_shape))]
    assert kinds.count("add") == 3 and "activation" not in kinds and kinds[-1] == "fc"


def test_a_model_with_an_audio_frontend_predicts_its_mfcc_too() -> None:
    from edgefleet.frontend import FrontendSpec

    spec = FrontendSpec.for_rate(16000)
    metrics = {"macs": POINTWISE.macs, "ops": layers_to_json([POINTWISE])}
    plain: dict[str, Any] = {"metrics": metrics, "input": {"shape": [1, 1, 49, 10]}}
    audio: dict[str, Any] = {
        "metrics": metrics,
        "input": {
            "shape": [1, 1, 49, 10],
            "frontend": spec.to_dict(),
            "raw": {"shape": [1, 16000]},
        },
    }
    m4 = get_profile("nucleo-l4r5zi")
    assert mcu_latency_ms(m4, audio) > mcu_latency_ms(m4, plain)
    kinds = {layer.kind for layer in manifest_layers(audio)}
    assert {"frontend-mac", "frontend-sqrt", "frontend-log"} <= kinds
    bad = {**audio, "input": {**audio["input"], "frontend": {**spec.to_dict(), "n_mels": "x"}}}
    with pytest.raises(ValueError, match="n_mels"):
        manifest_layers(bad)


def test_strided_pointwise_standalone_activations_and_softmax_are_counted() -> None:
    """A hand-built graph (no export): a strided 1x1 conv needs im2col (CMSIS-NN's fast 1x1
    kernel takes stride 1 only), LeakyRelu is its own op in TFLite (only ReLU/ReLU6 fuse), a
    ReLU after a Conv is fused, and Softmax is counted per element."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgefleet.modelops.measure import count_layers

    w1 = numpy_helper.from_array(np.zeros((8, 4, 1, 1), np.float32), "w1")
    w2 = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], strides=[2, 2]),
        helper.make_node("LeakyRelu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["c"], group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["d"]),
        helper.make_node("Flatten", ["d"], ["e"]),
        helper.make_node("Softmax", ["e"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w1, w2],
    )
    layers = count_layers(helper.make_model(graph))
    assert [layer.kind for layer in layers] == ["conv", "activation", "depthwise", "softmax"]
    strided, act, dw, soft = layers
    assert strided.macs == 8 * 4 * 4 * 4 and strided.im2col == 4 * 4 * 4
    assert act.elements == 8 * 4 * 4 and dw.macs == 8 * 4 * 4 * 9 and soft.elements == 128
