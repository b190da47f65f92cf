"""Compressed updates (edgefleet.fl.update_codec): sizes, error bounds, error feedback, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.fl.update_codec import CodecError, decode, encode, parse_codec, payload_bytes


def _delta(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(size=(32, 65)).astype(np.float32),  # odd size: 4-bit packing pads
        "b": rng.normal(size=(7,)).astype(np.float32),
    }


@pytest.mark.parametrize(
    ("name", "max_ratio", "bits"), [("q8", 0.27, 8), ("q4", 0.15, 4), ("topk:0.1", 0.22, 0)]
)
def test_each_codec_shrinks_the_update_and_bounds_its_error(
    name: str, max_ratio: float, bits: int
) -> None:
    delta = _delta()
    codec = parse_codec(name)
    encoded, residual = encode(delta, codec)
    assert payload_bytes(encoded) < max_ratio * payload_bytes(delta)
    decoded = decode(encoded, codec)
    for k, d in delta.items():
        assert decoded[k].shape == d.shape
        np.testing.assert_allclose(decoded[k] + residual[k], d, atol=1e-5)  # residual = lost
        if bits:  # quantization error is at most half a step
            step = (d.max() - d.min()) / ((1 << bits) - 1)
            assert np.abs(decoded[k] - d).max() <= step / 2 + 1e-5
    if name.startswith("topk"):
        w = decoded["w"]
        assert np.count_nonzero(w) == round(0.1 * w.size)
        kept = np.abs(delta["w"][w != 0]).min()
        assert kept >= np.abs(delta["w"][w == 0]).max()  # the largest entries are the kept ones


def test_error_feedback_delivers_what_topk_dropped_later() -> None:
    codec = parse_codec("topk:0.05")
    rounds = [_delta(seed) for seed in range(30)]
    residual: dict[str, np.ndarray] = {}
    sent = {k: np.zeros_like(v) for k, v in rounds[0].items()}
    for delta in rounds:
        encoded, residual = encode(delta, codec, residual)
        for k, v in decode(encoded, codec).items():
            sent[k] += v
    total = {k: sum(d[k] for d in rounds) for k in sent}
    # everything sent plus what is still carried is exactly what was trained
    for k in total:
        np.testing.assert_allclose(sent[k] + residual[k], total[k], atol=1e-3)
    # without feedback the dropped 95 % would be lost for good: the error is far larger
    lost = sum(float(np.abs(total[k] - sent[k]).sum()) for k in total)
    no_fb = sum(
        float(np.abs(total[k] - sum(decode(encode(d, codec)[0], codec)[k] for d in rounds)).sum())
        for k in total
    )
    assert lost < 0.5 * no_fb


def test_none_is_the_identity_and_keeps_no_residual() -> None:
    delta = _delta()
    encoded, residual = encode(delta, parse_codec("none"))
    assert residual == {} and payload_bytes(encoded) == payload_bytes(delta)


@pytest.mark.parametrize("bad", ["q2", "topk", "topk:0", "topk:1.5", "topk:x", "zip"])
def test_bad_codec_names_are_one_clear_error(bad: str) -> None:
    with pytest.raises(CodecError, match=r"topk|update codec"):
        parse_codec(bad)


def test_a_torn_update_is_refused() -> None:
    codec = parse_codec("q8")
    encoded, _ = encode(_delta(), codec)
    del encoded["w::mm"]
    with pytest.raises(CodecError, match="missing"):
        decode(encoded, codec)
    with pytest.raises(CodecError, match="not a q8 encoded"):
        decode({"w": np.zeros(3, np.float32)}, codec)
    bad, _ = encode(_delta(), parse_codec("topk:0.1"))
    bad["w::idx"] = bad["w::idx"] + 10_000
    with pytest.raises(CodecError, match="out of range"):
        decode(bad, parse_codec("topk:0.1"))
