"""Text corpora for byte-level language models: Python's own sources, or a user's ``.txt``.

Why Python's standard library: it ships on every machine that runs edgefleet (nothing is
downloaded at run time), it is real, varied text (code, docstrings, comments in English) of a few
MB, and its licence allows it: the Python Software Foundation License Version 2 (``LICENSE.txt``
next to the sources), a permissive licence that allows copying and derived works with the notice
kept. We use it only to train and measure a model; the corpus is never redistributed.

The split is by *document*: whole modules (or, in a user's file, whole 4 KiB chunks) are held out
with a fixed seed until ~10 % of the bytes are, so held-out perplexity is measured on text the
model never saw a byte of (the same reason the KWS set holds out whole voices). The corpus is
cached per data dir as one ``.npz`` of uint8 bytes keyed by its content hash.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet.datasets.core import SPLIT_SEED, DatasetError

__all__ = [
    "STDLIB_LICENSE",
    "TextCorpus",
    "load_text",
    "load_text_file",
    "python_stdlib_corpus",
]

ByteArray = npt.NDArray[np.uint8]
#: what the built-in corpus is and under which licence (recorded in manifests and benchmarks)
STDLIB_LICENSE = "Python Software Foundation License Version 2 (PSF-2.0)"
#: share of the bytes held out for perplexity (whole documents, seeded)
HELD_OUT_FRACTION = 0.1
#: a user's single file is cut into documents of this many bytes before the split
CHUNK_BYTES = 4096
#: separates documents in the training stream (a byte that never occurs in text)
SEPARATOR = b"\x00"


@dataclass(frozen=True)
class TextCorpus:
    """A train and a held-out byte stream, and where they came from."""

    name: str
    source: str
    license: str
    train: ByteArray
    test: ByteArray
    documents: int
    held_out_documents: int
    sha256: str

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "source": self.source,
            "license": self.license,
            "sha256": self.sha256,
            "train_bytes": int(self.train.size),
            "test_bytes": int(self.test.size),
            "documents": self.documents,
            "held_out_documents": self.held_out_documents,
            "split_seed": SPLIT_SEED,
        }


def split_documents(name: str, source: str, license: str, docs: Sequence[bytes]) -> TextCorpus:
    """Hold out whole documents (seeded) until ``HELD_OUT_FRACTION`` of the bytes are."""
    docs = [d for d in docs if d]
    total = sum(len(d) for d in docs)
    if len(docs) < 2 or total < 2 * CHUNK_BYTES:
        raise DatasetError(
            f"{source}: {total} bytes in {len(docs)} documents; a language model needs at "
            f"least {2 * CHUNK_BYTES} bytes of text"
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(docs))
    held: set[int] = set()
    taken = 0
    for i in order:
        if taken >= HELD_OUT_FRACTION * total:
            break
        held.add(int(i))
        taken += len(docs[int(i)])
    train = SEPARATOR.join(d for i, d in enumerate(docs) if i not in held)
    test = SEPARATOR.join(d for i, d in enumerate(docs) if i in held)
    h = hashlib.sha256(b"edgefleet-text-v1\0")
    for d in docs:
        h.update(hashlib.sha256(d).digest())
    return TextCorpus(
        name,
        source,
        license,
        np.frombuffer(train, dtype=np.uint8).copy(),
        np.frombuffer(test, dtype=np.uint8).copy(),
        len(docs),
        len(held),
        h.hexdigest(),
    )


def python_stdlib_corpus(max_bytes: int | None = None) -> TextCorpus:
    """The top-level ``*.py`` modules of the running Python's standard library, by name.

    ``max_bytes`` keeps the first modules (sorted by name) up to that many bytes: tests use
    a few hundred KB, the benchmark all of it (~4 MB on CPython 3.11).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    docs: list[bytes] = []
    size = 0
    for path in files:
        data = path.read_bytes().replace(SEPARATOR, b"")
        docs.append(data)
        size += len(data)
        if max_bytes is not None and size >= max_bytes:
            break
    source = (
        f"python-stdlib: {len(docs)} modules of {root} (CPython {sysconfig.get_python_version()})"
    )
    return split_documents("python-stdlib", source, STDLIB_LICENSE, docs)


def load_text_file(path: Path) -> TextCorpus:
    """A user's text file: cut into ``CHUNK_BYTES`` documents, then split like the built-in."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such text file")
    data = path.read_bytes().replace(SEPARATOR, b"")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    docs = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    return split_documents(path.stem, str(path), "the user's", docs)


def load_text(
    dataset: str, data_dir: Path | None = None, *, max_bytes: int | None = None
) -> TextCorpus:
    """``python-stdlib`` or a ``.txt`` path; cached under ``data_dir/datasets/text/``."""
    if dataset == "python-stdlib":
        corpus = python_stdlib_corpus(max_bytes)
    elif dataset.endswith(".txt"):
        corpus = load_text_file(Path(dataset))
    else:
        raise DatasetError(f"text dataset must be python-stdlib or a .txt file, got {dataset!r}")
    if data_dir is not None:
        _cache(corpus, data_dir)
    return corpus


def _cache(corpus: TextCorpus, data_dir: Path) -> Path:
    """Store the split streams once per content hash (what a trained model points at)."""
    out = data_dir / "datasets" / "text" / f"{corpus.name}-{corpus.sha256[:16]}.npz"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.npz")
        np.savez(tmp, train=corpus.train, test=corpus.test)
        tmp.replace(out)
    return out
