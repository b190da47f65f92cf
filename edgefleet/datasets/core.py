"""The dataset record, its checks, its seeded split and its content hash (numpy only).

A :class:`Dataset` is data, not code: ``x`` (N, ...) float32, ``y`` (N,) int64 class indices
into ``classes``, optional ``groups`` (speaker/device/user per row), and the row indices of one
deterministic train/val/test split. ``sha256`` covers the data (not the split); the split has its
own digest, so a manifest can say which rows every variant was measured on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "SPLIT_NAMES",
    "SPLIT_SEED",
    "Dataset",
    "DatasetError",
    "check_arrays",
    "content_hash",
    "make_dataset",
    "split_rows",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
SPLIT_NAMES = ("train", "val", "test")
#: the seed of every split this package makes (fixed: the same data gives the same rows)
SPLIT_SEED = 1234
#: fractions of rows (or groups) going to validation and test; the rest trains
VAL_FRACTION = 0.2
TEST_FRACTION = 0.2


class DatasetError(ValueError):
    """Data that cannot be used; the message is one line naming the file or field."""


@dataclass(frozen=True)
class Dataset:
    """Rows, labels, groups and one fixed split of them."""

    name: str
    source: str
    x: FloatArray
    y: IntArray
    classes: tuple[str, ...]
    train: IntArray
    val: IntArray
    test: IntArray
    groups: npt.NDArray[np.str_] | None
    sha256: str
    #: raw values are multiplied by this before entering the network (recorded for devices)
    input_scale: float = 1.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_labels(self) -> npt.NDArray[np.str_]:
        """``train``/``val``/``test`` per row."""
        out = np.full(len(self.y), "train", dtype="<U5")
        out[self.val] = "val"
        out[self.test] = "test"
        return out

    def split_sha256(self) -> str:
        h = hashlib.sha256()
        for rows in (self.train, self.val, self.test):
            h.update(np.ascontiguousarray(rows, dtype="<i8").tobytes())
            h.update(b"|")
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What a manifest records: the data's hash and the rows each split holds."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "classes": list(self.classes),
            "rows": len(self.y),
            "split": {
                "seed": SPLIT_SEED,
                "train": len(self.train),
                "val": len(self.val),
                "test": len(self.test),
                "sha256": self.split_sha256(),
                "grouped": self.groups is not None,
            },
        }


def content_hash(
    x: FloatArray, y: IntArray, classes: Sequence[str], groups: npt.NDArray[np.str_] | None
) -> str:
    """sha256 over shape, x (little-endian float32, C order), y, classes and groups, in order."""
    h = hashlib.sha256(b"edgefleet-dataset-v1\0")
    h.update(repr(tuple(int(d) for d in x.shape)).encode())
    h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    h.update("\0".join(classes).encode() + b"\1")
    if groups is not None:
        h.update("\0".join(str(g) for g in groups).encode())
    return h.hexdigest()


def check_arrays(
    x: npt.NDArray[Any], y: npt.NDArray[Any], where: str
) -> tuple[FloatArray, IntArray]:
    """x numeric and finite, y integer labels of the same length, at least two classes."""
    if x.dtype == object:
        raise DatasetError(
            f"{where}: x has mixed shapes (an object array); need one (N, ...) array"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DatasetError(f"{where}: x must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DatasetError(f"{where}: x must be (N, ...) with at least one feature, got {x.shape}")
    if y.ndim != 1:
        raise DatasetError(f"{where}: y must be (N,), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{where}: y labels must be integers, got dtype {y.dtype}")
    if len(y) != len(x):
        raise DatasetError(f"{where}: y has {len(y)} labels for {len(x)} rows of x")
    xf = x.astype(np.float32)
    bad = ~np.isfinite(xf)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DatasetError(f"{where}: x has {int(bad.sum())} NaN/inf values (first in row {row})")
    if len(np.unique(y)) < 2:
        raise DatasetError(f"{where}: y has only one class; need at least 2")
    return xf, y.astype(np.int64)


def _take(rows: IntArray, n_val: int, n_test: int) -> tuple[list[int], list[int], list[int]]:
    return (
        rows[n_val + n_test :].tolist(),
        rows[:n_val].tolist(),
        rows[n_val : n_val + n_test].tolist(),
    )


def split_rows(
    y: IntArray, groups: npt.NDArray[np.str_] | None, where: str, seed: int = SPLIT_SEED
) -> tuple[IntArray, IntArray, IntArray]:
    """A seeded, stratified 60/20/20 split; with ``groups``, whole groups go to one side.

    Stratified per class (rows, or groups by their most common class), so every class is in
    every split; a class that cannot be is an error, never a silently missing class.
    """
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    if groups is None:
        for c in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == c))
            if len(rows) < 3:
                raise DatasetError(
                    f"{where}: class {int(c)} has {len(rows)} row(s); need at least 3 "
                    "(one each for train, validation and test)"
                )
            n_val = max(1, round(len(rows) * VAL_FRACTION))
            n_test = max(1, round(len(rows) * TEST_FRACTION))
            tr, va, te = _take(rows, n_val, n_test)
            train += tr
            val += va
            test += te
    else:
        names, inverse = np.unique(groups, return_inverse=True)
        majority = np.array(
            [np.bincount(y[inverse == g]).argmax() for g in range(len(names))], dtype=np.int64
        )
        for c in np.unique(majority):
            members = rng.permutation(np.flatnonzero(majority == c))
            if len(members) < 3:
                continue  # few groups of this class: they train; checked below
            n_val = max(1, round(len(members) * VAL_FRACTION))
            n_test = max(1, round(len(members) * TEST_FRACTION))
            for part, gs in zip((train, val, test), _take(members, n_val, n_test), strict=True):
                part += np.flatnonzero(np.isin(inverse, gs)).tolist()
        taken = set(train) | set(val) | set(test)
        train += [i for i in range(len(y)) if i not in taken]
    out = tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in (train, val, test))
    for label, rows in zip(SPLIT_NAMES, out, strict=True):
        missing = sorted(set(np.unique(y).tolist()) - set(y[rows].tolist()))
        if missing:
            how = "more groups per class" if groups is not None else "more rows"
            raise DatasetError(f"{where}: class {missing[0]} has no {label} rows (needs {how})")
    return out[0], out[1], out[2]


def make_dataset(
    name: str,
    source: str,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    *,
    classes: Sequence[str] | None = None,
    groups: npt.NDArray[Any] | None = None,
    split: npt.NDArray[Any] | None = None,
    input_scale: float = 1.0,
    where: str | None = None,
) -> Dataset:
    """Check, relabel to 0..K-1, split (or take the given split) and hash."""
    where = where or source
    xf, yi = check_arrays(x, y, where)
    values = np.unique(yi)
    if classes is None:
        classes = [str(int(v)) for v in values]
        yi = np.searchsorted(values, yi).astype(np.int64)
    elif int(yi.min()) < 0 or int(yi.max()) >= len(classes):
        raise DatasetError(f"{where}: y has labels outside 0..{len(classes) - 1}")
    g = None
    if groups is not None:
        if groups.shape != (len(yi),):
            raise DatasetError(f"{where}: groups has shape {groups.shape}, need ({len(yi)},)")
        g = groups.astype(str)
    if split is not None:
        s = split.astype(str)
        if s.shape != (len(yi),):
            raise DatasetError(f"{where}: split has shape {split.shape}, need ({len(yi)},)")
        unknown = sorted(set(s.tolist()) - set(SPLIT_NAMES))
        if unknown:
            raise DatasetError(f"{where}: split has {unknown[0]!r}; use train, val or test")
        parts = [np.flatnonzero(s == n).astype(np.int64) for n in SPLIT_NAMES]
        for label, rows in zip(SPLIT_NAMES, parts, strict=True):
            missing = sorted(set(range(len(classes))) - set(yi[rows].tolist()))
            if missing:
                raise DatasetError(
                    f"{where}: split: class {classes[missing[0]]} has no {label} rows"
                )
        if g is not None and set(g[parts[2]].tolist()) & set(g[parts[0]].tolist()):
            raise DatasetError(f"{where}: split: a test group also appears in train")
        train, val, test = parts
    else:
        train, val, test = split_rows(yi, g, where)
    digest = content_hash(xf, yi, list(classes), g)
    return Dataset(name, source, xf, yi, tuple(classes), train, val, test, g, digest, input_scale)
