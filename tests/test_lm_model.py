"""The byte-level LM: its KV cache, its rebuild from a manifest, its corpus and its training."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgefleet.datasets import DatasetError
from edgefleet.datasets.text import HELD_OUT_FRACTION, load_text, python_stdlib_corpus
from edgefleet.modelops.lm_train import LMTrainConfig, perplexity, train_lm
from edgefleet.zoo import (
    ARCHITECTURES,
    ArchitectureError,
    ArchitectureSpec,
    ByteLM,
    build_model,
)

TINY = LMTrainConfig(dim=32, layers=1, heads=2, context=32, steps=30, batch=8, lr=1e-2)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread (two contend with the rest of the suite for nothing)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_prefill_then_decode_with_the_cache_equals_one_full_forward() -> None:
    torch.manual_seed(0)
    model = ByteLM(dim=32, layers=2, heads=2).eval()
    tokens = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        full, _, _ = model(tokens, *model.empty_cache(2))
        first, k, v = model(tokens[:, :6], *model.empty_cache(2))
        for i in range(6, 9):  # one byte at a time, as generation does
            step, k, v = model(tokens[:, i : i + 1], k, v)
            torch.testing.assert_close(step[:, 0], full[:, i], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(first, full[:, :6], atol=1e-5, rtol=1e-4)
    assert k.shape == (2, 2, 2, 9, 16)  # (layers, batch, heads, positions, head_dim)


def test_the_lm_rebuilds_from_its_manifest_spec_and_stays_out_of_the_classifier_list() -> None:
    model = ByteLM(dim=32, layers=1, heads=2, context=64)
    spec = ArchitectureSpec("byte-lm", model.config(), (64,))
    rebuilt = build_model(ArchitectureSpec.from_json(spec.to_json()))
    assert isinstance(rebuilt, ByteLM) and rebuilt.config() == model.config()
    assert "byte-lm" not in ARCHITECTURES
    with pytest.raises(ArchitectureError, match="even-sized heads"):
        ByteLM(dim=30, heads=4)


def test_the_stdlib_corpus_holds_out_whole_modules_deterministically() -> None:
    a = python_stdlib_corpus(max_bytes=200_000)
    b = python_stdlib_corpus(max_bytes=200_000)
    assert a.sha256 == b.sha256 and np.array_equal(a.test, b.test)
    assert "PSF" in a.license and a.held_out_documents >= 1
    total = a.train.size + a.test.size
    assert HELD_OUT_FRACTION * total * 0.5 < a.test.size < 0.5 * total
    # no held-out module appears in training: its first 200 bytes are not in the train stream
    first = bytes(a.test[:200])
    assert first not in bytes(a.train)


def test_a_users_text_file_is_split_and_bad_files_get_one_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "notes.txt"
    good.write_text("the quick brown fox jumps over the lazy dog\n" * 800)
    corpus = load_text(str(good), tmp_path)
    assert corpus.test.size > 0 and corpus.documents == 9
    assert list((tmp_path / "datasets" / "text").glob("notes-*.npz"))
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(DatasetError, match="needs at least"):
        load_text(str(short))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe" * 5000)
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_text(str(binary))
    with pytest.raises(DatasetError, match="no such text file"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(DatasetError, match=r"python-stdlib or a \.txt"):
        load_text("fortunes")


def test_training_lowers_held_out_perplexity_and_is_cached(tmp_path: Path) -> None:
    corpus = python_stdlib_corpus(max_bytes=100_000)
    untrained = build_model(ArchitectureSpec("byte-lm", TINY.arch(), (32,)))
    assert isinstance(untrained, ByteLM)
    before = perplexity(untrained, corpus.test, 32, 4096)
    trained = train_lm(corpus, TINY, tmp_path, eval_bytes=4096, quiet=True)
    assert trained.metrics["perplexity"] < 0.5 * before  # ~256 (uniform) before
    again = train_lm(corpus, TINY, tmp_path, eval_bytes=4096, quiet=True)
    assert again.cached and not trained.cached
    for (name, a), b in zip(
        trained.model.state_dict().items(), again.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
