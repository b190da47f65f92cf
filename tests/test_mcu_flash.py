"""What an MCU variant takes of the device: flash (model + the TFLM code its ops link) and,
with an MFCC frontend, SRAM beside the arena; and the ops the MCU export refuses, by name.

* Flash is computed once (:func:`edgefleet.mcu_flash.flash_image`): the build records it
  (``metrics.mcu.flash_bytes``), selection checks and explains it, and the ``tflm`` and
  ``mcu-sim`` runtimes refuse a device without it, all with the same number.
* mcu-sim on a variant with a frontend needs arena + the frontend's buffers in SRAM, and
  reports both as its working memory.
* HardSwish, Sigmoid and Softmax are refused at build (the default build's note and the
  variant's ``metrics.mcu.error``) in one line naming the op as the user wrote it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from edgefleet.agent.runtimes import BudgetExceededError, open_runtime
from edgefleet.agent.runtimes.tflite_io import tflite_ops
from edgefleet.bundle import Bundle
from edgefleet.catalog import get_profile
from edgefleet.coordinator.variant_selection import LatencyPredictor, Policy, VariantFacts, judge
from edgefleet.coordinator.variant_selection import select as select_variant
from edgefleet.coordinator.variants import facts_from_manifest
from edgefleet.frontend import FrontendSpec
from edgefleet.mcu_flash import (
    CORE_CODE_BYTES,
    FRONTEND_CODE_BYTES,
    KERNEL_CODE_BYTES,
    UNKNOWN_KERNEL_BYTES,
    flash_image,
    kernels_of_graph,
)
from edgefleet.modelops.applicable import mcu_blocker
from edgefleet.modelops.data import Dataset, load_dataset
from edgefleet.profiles import DeviceProfile
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ArchitectureSpec
from tests.tflite_models import LinearInt8, built_int8_digits, linear_digits_model


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="module")
def linear(digits: Dataset) -> LinearInt8:
    return linear_digits_model(digits.x_train, digits.y_train.astype(np.int64), 10)


class _Fixed(LatencyPredictor):
    def predict_ms(self, variant: VariantFacts, runtime: str) -> float:
        return 1.0


# --- the one computation ----------------------------------------------------------------------


def test_flash_is_the_model_plus_the_core_plus_each_kernel_once() -> None:
    image = flash_image(10_000, ["CONV_2D", "RESHAPE", "CONV_2D", "FULLY_CONNECTED"])
    kernels = KERNEL_CODE_BYTES["CONV_2D"] + KERNEL_CODE_BYTES["RESHAPE"]
    kernels += KERNEL_CODE_BYTES["FULLY_CONNECTED"]
    assert image.total == 10_000 + CORE_CODE_BYTES + kernels  # a kernel is linked once
    assert image.code_bytes == image.total - 10_000
    # more kinds of op -> more flash, by exactly that kernel's entry
    more = flash_image(10_000, ["CONV_2D", "RESHAPE", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"])
    assert more.total - image.total == KERNEL_CODE_BYTES["DEPTHWISE_CONV_2D"] > 0
    # an op the table does not know is never free; a frontend adds its code
    odd = flash_image(10_000, ["CONV_2D", "RESHAPE", "FULLY_CONNECTED", "GATHER"])
    assert odd.total - image.total == UNKNOWN_KERNEL_BYTES == max(KERNEL_CODE_BYTES.values())
    heard = flash_image(10_000, ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"], "mfcc")
    assert heard.total - image.total == FRONTEND_CODE_BYTES["mfcc"]
    assert image.to_json()["flash_bytes"] == image.total
    assert f"model 10000 + TFLM code {image.code_bytes}" in image.describe()
    with pytest.raises(ValueError, match="negative"):
        flash_image(-1, [])
    # the JSON graph's op kinds map to the kernels a device links for them
    assert kernels_of_graph([{"op": "conv2d"}, {"op": "global_average_pool"}]) == [
        "CONV_2D",
        "MEAN",
    ]


# --- build -> manifest -> selection -> device, one number --------------------------------------


def test_the_build_records_flash_and_selection_and_the_device_check_it(
    linear: LinearInt8,
) -> None:
    built = built_int8_digits()
    bundle = VariantStore(built.data_dir).load(built.int8)
    model = bundle.file("model.tflite")
    mcu = bundle.manifest["metrics"]["mcu"]
    image = flash_image(len(model), tflite_ops(model))
    # a DS-CNN links more kinds of kernel than a linear classifier (RESHAPE, FULLY_CONNECTED)
    small = flash_image(len(linear.tflite), tflite_ops(linear.tflite))
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(image.kernel_bytes)
    extra = set(image.kernel_bytes) - set(small.kernel_bytes)
    assert image.code_bytes - small.code_bytes == sum(KERNEL_CODE_BYTES[op] for op in extra) - sum(
        KERNEL_CODE_BYTES[op] for op in set(small.kernel_bytes) - set(image.kernel_bytes)
    )
    assert image.code_bytes > small.code_bytes
    assert mcu["flash_bytes"] == image.total == len(model) + mcu["code_bytes"]
    assert mcu["code"]["kernels"] == image.kernel_bytes
    facts = facts_from_manifest(built.int8, dict(bundle.manifest))
    assert (facts.mcu_flash_bytes, facts.mcu_code_bytes) == (image.total, image.code_bytes)
    base = get_profile("cortex-m4")
    # selection: exactly enough flash fits; one byte less is refused, naming model and code
    fits = base.model_copy(update={"storage_bytes": image.total})
    short = base.model_copy(update={"storage_bytes": image.total - 1})
    assert judge(fits, facts, _Fixed(), Policy()).fits
    failures = judge(short, facts, _Fixed(), Policy()).failures
    flash = [f for f in failures if f.startswith("flash:")]
    assert flash and "+ TFLM code" in flash[0] and "short by 1 B" in flash[0]
    # explain's reason says what the chosen variant takes of the flash
    chosen = select_variant(fits, [facts], _Fixed())
    assert chosen.winner is not None and "flash " in chosen.reason and "TFLM code" in chosen.reason
    # the devices: both MCU runtimes refuse one byte short and load with exactly enough
    for name in ("tflm", "mcu-sim"):
        profile = base.model_copy(update={"runtimes": (name,), "storage_bytes": image.total - 1})
        with pytest.raises(BudgetExceededError, match=rf"flash: bundle needs {image.total} "):
            open_runtime(name, profile).load(bundle)
        rt = open_runtime(name, profile.model_copy(update={"storage_bytes": image.total}))
        rt.load(bundle)
        assert rt.memory().weights == image.total


# --- the frontend's buffers on the device ------------------------------------------------------


def _frontend_bundle(model: bytes, spec: dict[str, Any], frontend: bool) -> Bundle:
    """The linear digits .tflite as an MCU bundle, with or without an MFCC frontend in front
    of it (the budget check does not run the network)."""
    input_spec: dict[str, Any] = dict(spec)
    if frontend:
        input_spec["frontend"] = FrontendSpec().to_dict()
        input_spec["raw"] = {"shape": [1, 16000], "dtype": "float32"}
    manifest = {
        "precision": "int8",
        "runtimes": {
            "mcu-sim": {"model": "model.tflite"},
            "tflm": {"file": "model.tflite", "layout": "NHWC"},
        },
        "input": input_spec,
        "metrics": {"macs": 640},
    }
    return Bundle("0" * 64, manifest, {"model.tflite": model}, Path("."), "test")


def _mcu(ram: int) -> DeviceProfile:
    base = get_profile("cortex-m4")
    return base.model_copy(update={"ram_bytes": ram, "sram_region_bytes": 0})


@pytest.mark.parametrize("runtime", ["mcu-sim", "tflm"])
def test_mcu_runtimes_need_arena_plus_frontend_buffers_in_sram(
    runtime: str, linear: LinearInt8, digits: Dataset
) -> None:
    plain = _frontend_bundle(linear.tflite, digits.input_spec(), frontend=False)
    heard = _frontend_bundle(linear.tflite, digits.input_spec(), frontend=True)

    def on(ram: int) -> Any:
        return open_runtime(runtime, _mcu(ram).model_copy(update={"runtimes": (runtime,)}))

    rt = on(get_profile("cortex-m4").ram_bytes)
    rt.load(plain)
    arena = rt.memory().working
    buffers = FrontendSpec().cost(16000).ram_bytes
    assert arena > 0 and rt.frontend_ram_bytes == 0
    # an SRAM that holds the arena alone serves the plain variant, not the one with a frontend
    on(arena).load(plain)
    with pytest.raises(BudgetExceededError) as err:
        on(arena + buffers - 1).load(heard)
    assert (err.value.needed, err.value.available) == (arena + buffers, arena + buffers - 1)
    text = str(err.value)
    assert "\n" not in text and f"MFCC frontend buffers {buffers}" in text
    # exactly enough: loads, and reports both as working memory
    ok = on(arena + buffers)
    ok.load(heard)
    usage = ok.memory()
    assert usage.working == arena + buffers and f"frontend buffers {buffers}" in usage.method


# --- ops the MCU export refuses, named as the user wrote them ---------------------------------


class _Act(nn.Module):
    """A tiny classifier with one activation the MCU export does not cover."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 16)
        self.head = nn.Linear(16, 10)
        self.act: nn.Module = {
            "hardswish": nn.Hardswish(),
            "sigmoid": nn.Sigmoid(),
            "softmax": nn.Softmax(dim=1),
        }[act]
        self.last = act == "softmax"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(torch.flatten(x, 1))
        if self.last:
            return self.act(self.head(y))  # type: ignore[no-any-return]
        out: torch.Tensor = self.head(self.act(y))
        return out


@pytest.mark.parametrize(
    ("act", "named"),
    [("hardswish", "HardSwish"), ("sigmoid", "Sigmoid"), ("softmax", "Softmax")],
)
def test_hardswish_sigmoid_and_softmax_are_refused_at_build_naming_the_op(
    act: str, named: str, digits: Dataset
) -> None:
    torch.manual_seed(0)
    model = _Act(act).eval()
    spec = ArchitectureSpec.custom(f"{__name__}:_Act", {"act": act}, (1, 8, 8))
    reason = mcu_blocker(model, spec, digits)
    assert reason is not None and "\n" not in reason
    assert reason.startswith(f"op {named}") and "not supported by the MCU format" in reason
