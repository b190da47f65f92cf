"""LM variants: one KV-cache ONNX graph, fp16 and MatMulNBits int8/int4, measured by onnxruntime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgefleet.modelops.lm_compress import LMVariantFile, build_lm_variants, parse_lm_recipe
from edgefleet.modelops.lm_measure import kv_cache_bytes, measure_lm, peak_memory, session
from edgefleet.zoo import ByteLM

RECIPES = ("fp32", "fp16", "int8", "int4-g32")


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ByteLM, dict[str, LMVariantFile]]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ByteLM(dim=64, layers=2, heads=2, context=32).eval()
    out = build_lm_variants(model, tmp_path_factory.mktemp("lm"), RECIPES)
    torch.set_num_threads(threads)
    yield model, {v.recipe: v for v in out}


def _logits(path: Path, tokens: np.ndarray) -> np.ndarray:
    s = session(path)
    k = s.get_inputs()[1]
    dtype = np.float16 if k.type == "tensor(float16)" else np.float32
    z = np.zeros((2, 1, 2, 0, 32), dtype=dtype)
    return np.asarray(
        s.run(["logits"], {"tokens": tokens, "past_k": z, "past_v": z})[0], np.float32
    )


def test_the_onnx_graph_matches_torch_for_prefill_and_cached_decode(
    built: tuple[ByteLM, dict[str, LMVariantFile]],
) -> None:
    model, variants = built
    tokens = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        want, _, _ = model(tokens, *model.empty_cache(1))
    s = session(variants["fp32"].path)
    z = np.zeros((2, 1, 2, 0, 32), dtype=np.float32)
    logits, k, v = s.run(None, {"tokens": tokens[:, :11].numpy(), "past_k": z, "past_v": z})
    np.testing.assert_allclose(logits, want[:, :11].numpy(), atol=1e-4)
    step, k, _ = s.run(None, {"tokens": tokens[:, 11:].numpy(), "past_k": k, "past_v": v})
    np.testing.assert_allclose(step[:, 0], want[:, 11].numpy(), atol=1e-4)
    assert k.shape == (2, 1, 2, 12, 32)


def test_weight_only_variants_hold_matmulnbits_and_shrink_in_order(
    built: tuple[ByteLM, dict[str, LMVariantFile]],
) -> None:
    _, variants = built
    for recipe in ("int8", "int4-g32"):
        ops = [n for n in onnx.load(str(variants[recipe].path)).graph.node]
        nbits = [n for n in ops if n.op_type == "MatMulNBits"]
        assert len(nbits) == 4 * 2 + 1  # qkv, proj, up, down per layer + the head
        attrs = {a.name: a.i for a in nbits[0].attribute}
        assert (attrs["bits"], attrs["block_size"]) == parse_lm_recipe(recipe)
    sizes = [variants[r].bytes for r in RECIPES]
    assert sizes == sorted(sizes, reverse=True), sizes
    tokens = np.arange(20, dtype=np.int64)[None, :] * 13 % 256
    ref = _logits(variants["fp32"].path, tokens)
    err = {r: float(np.abs(_logits(variants[r].path, tokens) - ref).max()) for r in RECIPES[1:]}
    assert 0 < err["int8"] < err["int4-g32"], err


def test_measurement_reports_every_number_and_the_fp16_cache_is_half(
    built: tuple[ByteLM, dict[str, LMVariantFile]],
) -> None:
    _, variants = built
    text = (np.arange(3000) * 7 % 97 + 32).astype(np.uint8)
    m = measure_lm(
        variants["int4-g32"].path, text, context=32, eval_bytes=1024, prompt=32, new_tokens=8,
        contexts=(16, 256),
    )  # fmt: skip
    assert 1.0 < m.perplexity < 1000 and m.prefill_tok_s > 0 and m.decode_tok_s > 0
    assert m.kv_bytes == {16: 2 * 2 * 2 * 16 * 32 * 4, 256: 2 * 2 * 2 * 256 * 32 * 4}
    assert m.peak_bytes[16] > variants["int4-g32"].bytes
    half = kv_cache_bytes(session(variants["fp16"].path), 256)
    assert half * 2 == m.kv_bytes[256]


def test_a_bad_recipe_or_graph_gets_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown LM recipe 'int3'"):
        parse_lm_recipe("int3")
    with pytest.raises(ValueError, match="int4 groups"):
        parse_lm_recipe("int4-g48")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    with pytest.raises(RuntimeError, match=r"peak-memory probe of broken\.onnx at 64 failed: "):
        peak_memory(broken, 64)
