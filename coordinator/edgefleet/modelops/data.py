"""The offline dataset: scikit-learn's UCI handwritten digits with one fixed split.

Nothing is downloaded: ``load_digits`` ships inside scikit-learn. The split is stratified and
seeded so every variant of a model, on any machine, is trained, calibrated and measured on the
same images (the test split is never used for training, calibration or model selection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.fl.contract import DIGITS_SPLIT_SEED

__all__ = ["DATASETS", "Dataset", "DatasetError", "load_dataset"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
DATASETS = ("digits",)


class DatasetError(ValueError):
    """An unknown dataset name."""


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    def input_spec(self) -> dict[str, Any]:
        """What a device must feed the network; recorded in every manifest."""
        return {
            "name": "input",
            "shape": [1, *self.input_shape],
            "dtype": "float32",
            "layout": "NCHW",
            "preprocess": {"scale": self.input_scale, "offset": 0.0},
            "dataset": self.name,
        }


def load_dataset(name: str) -> Dataset:
    """Load a named dataset with its fixed 60/20/20 stratified split."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
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
    return Dataset(
        name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes=10, input_scale=scale
    )
