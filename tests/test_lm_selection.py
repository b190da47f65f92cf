"""LM selection: a variant and the longest context per device, and the budget that set it.

Facts at SmolLM2-135M's size (30 layers, 3 KV heads of 64, 8k positions): bytes per recipe as
onnxruntime stores them, perplexities in the measured order. Pure logic, no model runs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgefleet.catalog import CATALOG, MEMORY_BANDWIDTH_BYTES_S, memory_bandwidth
from edgefleet.coordinator import lm_selection as lms

KV_FP32 = 2 * 30 * 3 * 64 * 4


def _facts(recipe: str, precision: str, weights: int, ppl: float, kv: int = KV_FP32) -> lms.LMFacts:
    return lms.LMFacts(
        id=f"smol-{recipe}",
        recipe=recipe,
        precision=precision,
        bundle_bytes=weights,
        weight_bytes=weights,
        kv_bytes_per_token=kv,
        activation_bytes=20_000_000,
        activation_bytes_per_token=20_000,
        perplexity=ppl,
        max_context=8192,
    )


VARIANTS = [
    _facts("fp32", "fp32", 538_000_000, 10.00),
    _facts("fp16", "fp16", 269_000_000, 10.00, kv=KV_FP32 // 2),
    _facts("int8", "fp32", 150_000_000, 10.05),
    _facts("int4-g32", "fp32", 85_000_000, 10.40),
]


def test_phone_pi4_and_zero2w_get_different_variants_or_contexts_and_the_budget_is_named() -> None:
    picks = {}
    for name in ("phone-flagship", "rpi4", "rpi-zero2w"):
        sel = lms.select_lm(CATALOG[name], VARIANTS)
        assert sel.winner is not None, sel.reason
        picks[name] = (sel.winner.facts.recipe, sel.winner.context_limit, sel.winner.budget)
        assert f"set by the {sel.winner.budget} budget" in sel.reason
        assert sel.winner.budget in lms.explain_line(sel)
    assert len({(r, c) for r, c, _ in picks.values()}) == 3, picks
    # the phone has fp16 and bandwidth to spare: the fp16 graph's half-size cache reads least
    assert picks["phone-flagship"] == ("fp16", 8192, lms.BUDGET_MODEL)
    assert picks["rpi4"][0] == "int8"  # no fp16 on the A72 profile; int8 is within 2 %
    _, context, budget = picks["rpi-zero2w"]
    assert context < 8192 and budget in (lms.BUDGET_RAM, lms.BUDGET_DECODE)


def test_a_variant_whose_weights_exceed_ram_fails_with_the_ram_budget() -> None:
    verdict = lms.judge_lm(CATALOG["rpi-zero2w"], VARIANTS[0], lms.LMPolicy())
    assert not verdict.fits
    assert verdict.failures[0].startswith("ram: 64 positions need")


def test_fp16_is_refused_where_the_device_has_no_fp16() -> None:
    verdict = lms.judge_lm(CATALOG["rpi4"], VARIANTS[1], lms.LMPolicy())
    assert any(f.startswith("precision: fp16 computes in fp16") for f in verdict.failures)


def test_microcontrollers_are_refused_with_the_reason() -> None:
    sel = lms.select_lm(CATALOG["stm32h743"], VARIANTS)
    assert sel.winner is None
    assert sel.reason.startswith("refused: mcu: mcu-sim, tflm run no attention/KV-cache graph")
    assert "int4-g32 needs" in sel.reason  # the smallest variant is the one named


def test_decode_speed_follows_bandwidth_and_is_refined_by_measured_tokens_per_second() -> None:
    rpi4, f = CATALOG["rpi4"], VARIANTS[2]
    bw = MEMORY_BANDWIDTH_BYTES_S["rpi4"]
    predicted = lms.predict_decode_tok_s(f, rpi4, 1024)
    assert predicted == pytest.approx(lms.DEFAULT_EFFICIENCY * bw / f.bytes_per_token(1024))
    # a Pi 4 that reported 2 tok/s at 1024 positions: the prediction follows it, and the
    # context offered shrinks to where the (now slower) decode stays above the floor
    slow = replace(f, measured_decode={"rpi4": (2.0, 1024)})
    assert lms.predict_decode_tok_s(slow, rpi4, 1024) == pytest.approx(2.0)
    verdict = lms.judge_lm(rpi4, slow, lms.LMPolicy(min_decode_tok_s=1.5))
    assert verdict.budget == lms.BUDGET_DECODE and verdict.context_limit < 8192


def test_bandwidth_is_in_the_catalog_for_every_non_mcu_profile_and_aliases_resolve() -> None:
    for name, profile in CATALOG.items():
        assert (memory_bandwidth(name) is None) == profile.is_mcu, name


def test_no_variants_is_said_plainly() -> None:
    assert lms.select_lm(CATALOG["rpi4"], []).reason == "the model has no LM variants yet"
