"""What a model trains and is measured on: a built-in dataset or the user's own data.

``digits`` is scikit-learn's UCI handwritten digits (shipped inside scikit-learn, nothing is
downloaded) with its fixed stratified split. Anything else is a path: an ``.npz`` or a folder of
``.wav``/images per label, loaded, checked, split and hashed by :mod:`edgefleet.datasets`. A
registered model keeps its user data as a copy in the data dir (``datasets/<name>.npz``, with the
split), so every variant of it, built any time later, is measured on the same test rows; the
test split is never used for training, calibration or model selection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet import datasets
from edgefleet.datasets import DatasetError
from edgefleet.fl.contract import DIGITS_SPLIT_SEED

__all__ = ["DATASETS", "Dataset", "DatasetError", "load_dataset", "store_dataset"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
#: built-in dataset names (anything else given to ``--dataset`` is a path)
DATASETS = ("digits",)
#: where registered models keep their user data, under the data dir
STORED_DIR = "datasets"


@dataclass(frozen=True)
class Dataset:
    """Train / validation / test arrays plus the input spec a device must reproduce."""

    name: str
    x_train: FloatArray
    y_train: IntArray
    x_val: FloatArray
    y_val: IntArray
    x_test: FloatArray
    y_test: IntArray
    num_classes: int
    #: Raw pixels are multiplied by ``input_scale`` before entering the network.
    input_scale: float
    #: the data's hash and split (``edgefleet.datasets.Dataset.describe``), for the manifest
    info: dict[str, Any] = field(default_factory=dict)
    #: the checked user data this was made from (``None`` for built-ins)
    source: datasets.Dataset | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def input_spec(self) -> dict[str, Any]:
        """What a device must feed the network; recorded in every manifest."""
        return {
            "name": "input",
            "shape": [1, *self.input_shape],
            "dtype": "float32",
            "layout": "NCHW" if len(self.input_shape) == 3 else "NC",
            "preprocess": {"scale": self.input_scale, "offset": 0.0},
            "dataset": self.name,
        }


def _from_shared(d: datasets.Dataset, name: str) -> Dataset:
    return Dataset(
        name,
        d.x[d.train],
        d.y[d.train],
        d.x[d.val],
        d.y[d.val],
        d.x[d.test],
        d.y[d.test],
        num_classes=d.num_classes,
        input_scale=d.input_scale,
        info={**d.describe(), "name": name},
        source=d,
    )


def _digits() -> Dataset:
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    from sklearn.model_selection import train_test_split  # type: ignore[import-untyped]

    digits = load_digits()
    scale = 1.0 / 16.0  # pixel values are 0..16
    x = (digits.images.astype(np.float32) * scale)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(
        x, y, test_size=0.4, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=DIGITS_SPLIT_SEED, stratify=y_rest
    )
    classes = [str(c) for c in range(10)]
    xs, ys = np.concatenate([x_train, x_val, x_test]), np.concatenate([y_train, y_val, y_test])
    n_tr, n_va = len(y_train), len(y_val)
    shared = datasets.Dataset(
        "digits",
        "sklearn.datasets.load_digits",
        xs,
        ys,
        tuple(classes),
        np.arange(n_tr, dtype=np.int64),
        np.arange(n_tr, n_tr + n_va, dtype=np.int64),
        np.arange(n_tr + n_va, len(ys), dtype=np.int64),
        None,
        datasets.content_hash(xs, ys, classes, None),
        scale,
    )
    info = {**shared.describe(), "split": {**shared.describe()["split"], "seed": DIGITS_SPLIT_SEED}}
    return Dataset(
        "digits",
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        num_classes=10,
        input_scale=scale,
        info=info,
    )


def stored_name(d: datasets.Dataset) -> str:
    """The name a registered copy of ``d`` goes by: its file stem and the start of its hash."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(d.source).stem).strip(".-") or "data"
    return f"{stem[:40]}-{d.sha256[:12]}"


def load_dataset(name: str, data_dir: Path | None = None, **options: Any) -> Dataset:
    """A built-in name, a copy registered in ``data_dir``, or a path to the user's data.

    ``options`` go to the folder loaders (``rate``/``window_s`` for audio, ``size``/``mode``
    for images). Raises :class:`DatasetError` with one line naming the file or field at fault.
    """
    if name in DATASETS:
        return _digits()
    if data_dir is not None and re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        stored = Path(data_dir) / STORED_DIR / f"{name}.npz"
        if stored.is_file():
            return _from_shared(datasets.load_npz(stored, name=name), name)
    path = Path(name).expanduser()
    if not path.exists():
        raise DatasetError(
            f"unknown dataset {name!r}: not a built-in ({', '.join(DATASETS)}) "
            "nor an existing .npz file or folder"
        )
    shared = datasets.load_path(path, **options)
    return _from_shared(shared, stored_name(shared))


def store_dataset(data: Dataset, data_dir: Path) -> None:
    """Keep a user dataset (with its split) in ``data_dir`` under ``data.name``."""
    if data.source is None:
        return
    folder = Path(data_dir) / STORED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{data.name}.npz"
    if not target.exists():
        datasets.save_npz(data.source, target)
