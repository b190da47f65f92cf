"""Non-IID text for devices: each device holds its own *sources*, with held-out text of its own.

Why by source: a device's text is its user's (their mail, their code, their notes), not a
random slice of everyone's, so federated fine-tuning of a language model is non-IID by source,
as label skew is for a classifier. The built-in split gives each device whole packages of
Python's standard library (``asyncio``, ``email``, ``tkinter``, ...): real, distinct styles of
text that the base LM never saw (it trains on the *top-level* modules only,
:func:`edgefleet.datasets.text.python_stdlib_corpus`). A user's directory of ``.txt`` files is
split the same way, one file per source. Licence: as :data:`edgefleet.datasets.text.STDLIB_LICENSE`.

Within a device, whole modules (files) are held out with a fixed seed until ~20 % of its
bytes are: the device's perplexity is measured on text of its own sources it never trained on.
A shard is one ``.npz`` of two uint8 streams (``text_train``, ``text_eval``) plus its sources:
numpy only, what the device's ClientApp loads.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgefleet.datasets.core import SPLIT_SEED, DatasetError
from edgefleet.datasets.text import SEPARATOR

__all__ = [
    "DEVICE_PACKAGES",
    "TextShard",
    "load_text_shard",
    "save_text_shard",
    "stdlib_package_shards",
    "text_dir_shards",
]

ByteArray = npt.NDArray[np.uint8]
#: the packages each built-in device holds, in order (device i gets entry i mod len)
DEVICE_PACKAGES: tuple[tuple[str, ...], ...] = (
    ("asyncio", "concurrent"),
    ("email", "http", "urllib"),
    ("tkinter", "turtledemo"),
    ("unittest",),
    ("xml", "xmlrpc", "json"),
    ("multiprocessing", "logging"),
)
HELD_OUT_FRACTION = 0.2
#: a device's text is at least this many documents (long ones are cut to fit)
DOCS_AT_LEAST = 8


@dataclass(frozen=True)
class TextShard:
    """One device's text: what it trains on, what it is scored on, and where they came from."""

    name: str
    sources: tuple[str, ...]
    train: ByteArray
    eval: ByteArray


def _split(name: str, sources: Sequence[str], docs: Sequence[bytes], limit: int) -> TextShard:
    """Hold out whole documents (seeded) until ``HELD_OUT_FRACTION`` of the bytes are.

    A document longer than ``limit / DOCS_AT_LEAST`` keeps its head only, so one big module
    (``tkinter/__init__.py`` is 170 KB) cannot fill a device on its own.
    """
    kept: list[bytes] = []
    size = 0
    for d in docs:
        if d and size < limit:
            kept.append(d[: min(limit - size, max(1, limit // DOCS_AT_LEAST))])
            size += len(kept[-1])
    if len(kept) < 2:
        raise DatasetError(f"{name}: {len(kept)} document(s); a device needs at least 2")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(kept))
    held: set[int] = set()
    taken = 0
    for i in order:
        if taken >= HELD_OUT_FRACTION * size or len(held) == len(kept) - 1:
            break
        held.add(int(i))
        taken += len(kept[int(i)])
    train = SEPARATOR.join(d for i, d in enumerate(kept) if i not in held)
    test = SEPARATOR.join(d for i, d in enumerate(kept) if i in held)
    return TextShard(
        name,
        tuple(sources),
        np.frombuffer(train, np.uint8).copy(),
        np.frombuffer(test, np.uint8).copy(),
    )


def stdlib_package_shards(
    num_devices: int,
    max_bytes: int = 200_000,
    packages: Sequence[Sequence[str]] = DEVICE_PACKAGES,
) -> list[TextShard]:
    """``num_devices`` shards of whole stdlib packages (modules sorted by path), each at most
    ``max_bytes``."""
    if not 1 <= num_devices <= len(packages):
        raise DatasetError(f"1 to {len(packages)} built-in text devices, got {num_devices}")
    root = Path(sysconfig.get_paths()["stdlib"])
    shards = []
    for i in range(num_devices):
        group = tuple(packages[i])
        files = sorted(f for pkg in group for f in (root / pkg).rglob("*.py") if f.is_file())
        docs = [f.read_bytes().replace(SEPARATOR, b"") for f in files]
        shards.append(_split(f"stdlib:{'+'.join(group)}", group, docs, max_bytes))
    return shards


def text_dir_shards(
    groups: Mapping[str, Sequence[Path]], max_bytes: int = 200_000
) -> list[TextShard]:
    """A user's text: one shard per named group of ``.txt`` files (one file per source)."""
    shards = []
    for name, paths in groups.items():
        docs = []
        for p in paths:
            if not p.is_file():
                raise DatasetError(f"{p}: no such text file")
            docs.append(p.read_bytes().replace(SEPARATOR, b""))
        shards.append(_split(name, [str(p) for p in paths], docs, max_bytes))
    return shards


def save_text_shard(shard: TextShard, path: Path) -> Path:
    """One ``.npz``: the two byte streams and the shard's name and sources."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez(
            f,
            text_train=shard.train,
            text_eval=shard.eval,
            name=np.array(shard.name),
            sources=np.array(shard.sources),
        )
    return path


def load_text_shard(path: str | Path) -> TextShard:
    """Read a shard written by :func:`save_text_shard` (one clear error for anything else)."""
    try:
        with np.load(path) as z:
            return TextShard(
                str(z["name"]),
                tuple(str(s) for s in z["sources"]),
                z["text_train"].astype(np.uint8),
                z["text_eval"].astype(np.uint8),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: not a text shard ({type(exc).__name__}: {exc})") from None
