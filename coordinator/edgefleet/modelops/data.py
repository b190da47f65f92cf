"""What a model trains and is measured on: a built-in dataset or the user's own data.

``digits`` is scikit-learn's UCI handwritten digits (shipped inside scikit-learn, nothing is
downloaded) with its fixed stratified split. Anything else is a path: an ``.npz`` or a folder of
``.wav``/images per label, loaded, checked, split and hashed by :mod:`edgefleet.datasets`. A
registered model keeps its user data as a copy in the data dir (``datasets/<name>.npz``, with the
split), so every variant of it, built any time later, is measured on the same test rows; the
test split is never used for training, calibration or model selection.

``kws`` is 12-class keyword spotting synthesized offline with espeak-ng
(:func:`edgefleet.datasets.load_kws`: raw 1 s audio rows, test voices never heard in training),
generated once per data dir and cached there (``datasets/kws-<params hash>.npz``).

Audio rows (raw int16-scaled samples, ``(1, 1, T)`` at ``input_scale`` 1/32768) become MFCC
features here by default (:func:`with_frontend`): the frontend is part of the model, so the
network trains on features while the manifest records the frontend and the raw input a device
receives, and the device computes the same features itself (``edgefleet.frontend``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet import datasets
from edgefleet.datasets import DatasetError
from edgefleet.fl.contract import DIGITS_SPLIT_SEED
from edgefleet.frontend import FrontendError, FrontendSpec
from edgefleet.frontend.mfcc import mfcc

__all__ = [
    "DATASETS",
    "FRONTENDS",
    "Dataset",
    "DatasetError",
    "frontend_of",
    "load_dataset",
    "store_dataset",
    "with_frontend",
]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
#: built-in dataset names (anything else given to ``--dataset`` is a path)
DATASETS = ("digits", "kws")
#: where registered models keep their user data, under the data dir
STORED_DIR = "datasets"
#: ``--frontend`` choices: ``auto`` = MFCC for raw audio, nothing otherwise
FRONTENDS = ("auto", "mfcc", "none")
#: what a device multiplies int16 samples by: how raw audio rows are recognised
AUDIO_SCALE = 1.0 / 32768.0


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
    #: the signal frontend (``FrontendSpec.to_dict()``) when x are features of raw audio
    frontend: dict[str, Any] | None = None
    #: with a frontend: one row of the raw audio a device receives, e.g. ``(16000,)``
    raw_shape: tuple[int, ...] = ()
    #: with a frontend: the test rows' raw audio ``(N, T)`` (end-to-end checks on devices)
    x_test_raw: FloatArray | None = None

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
            **self._frontend_spec(),
        }

    def _frontend_spec(self) -> dict[str, Any]:
        """With a frontend, ``shape`` stays the network's (feature) input, which every runtime
        loads and checks; ``raw`` is what a device receives (``[1, T]`` float32 audio, int16
        samples times ``scale``; int16 itself is accepted too) and ``frontend`` every MFCC
        parameter it computes the features with."""
        if self.frontend is None:
            return {}
        return {
            "frontend": dict(self.frontend),
            "raw": {
                "shape": [1, *self.raw_shape],
                "dtype": "float32",
                "scale": self.input_scale,
                "layout": "NT",
            },
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


def default_cache_dir() -> Path:
    """Where built-ins are cached when no data dir is given: ``$XDG_CACHE_HOME/edgefleet``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet"


def _kws(data_dir: Path | None, size: str) -> Dataset:
    """Synthesized once (``datasets/kws-<params hash>.npz`` under the data dir), then read back."""
    root = Path(data_dir) if data_dir is not None else default_cache_dir()
    return _from_shared(datasets.load_kws(root, size=size), "kws")


def stored_name(d: datasets.Dataset) -> str:
    """The name a registered copy of ``d`` goes by: its file stem and the start of its hash."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(d.source).stem).strip(".-") or "data"
    return f"{stem[:40]}-{d.sha256[:12]}"


def load_dataset(
    name: str, data_dir: Path | None = None, frontend: str | Any = "auto", **options: Any
) -> Dataset:
    """A dataset (see :func:`_load_raw`) with its signal frontend applied (see
    :func:`with_frontend`; ``frontend`` is ``auto``/``mfcc``/``none`` or a spec dict)."""
    rate = options.get("rate")
    return with_frontend(
        _load_raw(name, data_dir, **options),
        frontend,
        sample_rate=int(rate) if isinstance(rate, int) else 16000,
    )


def _load_raw(name: str, data_dir: Path | None = None, **options: Any) -> Dataset:
    """A built-in name, a copy registered in ``data_dir``, or a path to the user's data.

    ``options`` go to the folder loaders (``rate``/``window_s`` for audio, ``size``/``mode``
    for images; ``kws_size`` names a :data:`edgefleet.datasets.KWS_SIZES` size for ``kws``,
    ``default`` unless given). Raises :class:`DatasetError` with one line naming the file or
    field at fault.
    """
    if name == "kws":
        return _kws(data_dir, str(options.get("kws_size", "default")))
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
    if data.source is None or data.name in DATASETS:
        return  # built-ins are rebuilt (digits) or cached under their own name (kws)
    folder = Path(data_dir) / STORED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{data.name}.npz"
    if not target.exists():
        datasets.save_npz(data.source, target)


# -- the signal frontend (issue 16 part 3) ---------------------------------------------------


def is_raw_audio(data: Dataset) -> bool:
    """Rows of raw int16-scaled audio: ``(1, 1, T)`` at ``input_scale`` 1/32768."""
    shape = data.input_shape
    return (
        len(shape) == 3
        and shape[:2] == (1, 1)
        and abs(data.input_scale - AUDIO_SCALE) < 1e-12
        and data.frontend is None
    )


def frontend_of(manifest: Mapping[str, Any]) -> str | dict[str, Any]:
    """The frontend a registered model was trained with (its base manifest's ``input``):
    the spec dict, or ``none`` (models without one, including audio models from before)."""
    spec = (manifest.get("input") or {}).get("frontend")
    return dict(spec) if isinstance(spec, dict) else "none"


def with_frontend(data: Dataset, frontend: str | Any = "auto", sample_rate: int = 16000) -> Dataset:
    """``data`` with x replaced by MFCC features of its raw audio rows, the spec recorded.

    ``auto`` applies MFCC at MLPerf Tiny's shape to raw audio and leaves other data alone;
    ``mfcc`` insists (one-line :class:`DatasetError` for data that is not raw audio); ``none``
    keeps raw rows; a dict is a recorded spec (rebuilding a registered model's variants).
    ``sample_rate`` other than 16 kHz keeps the 40 ms / 20 ms timing and 4 kHz top band.
    """
    if frontend == "none":
        return data
    if isinstance(frontend, dict):
        try:
            spec = FrontendSpec.from_dict(frontend)
        except FrontendError as exc:
            raise DatasetError(f"{data.name}: recorded {exc}") from exc
    elif frontend in ("auto", "mfcc"):
        if not is_raw_audio(data):
            if frontend == "auto":
                return data
            raise DatasetError(
                f"--frontend mfcc needs raw audio rows (1, 1, samples) at input scale 1/32768; "
                f"dataset {data.name} has rows {data.input_shape} at scale {data.input_scale:g}"
            )
        try:
            spec = FrontendSpec.for_rate(sample_rate)
        except FrontendError as exc:
            raise DatasetError(f"dataset {data.name}: {exc}") from exc
    else:
        raise DatasetError(f"unknown frontend {frontend!r} (known: {', '.join(FRONTENDS)})")
    if not is_raw_audio(data):
        raise DatasetError(f"frontend {spec.kind} needs raw audio rows; {data.name} has none")
    samples = data.input_shape[-1]
    try:
        spec.frames(samples)
    except FrontendError as exc:
        raise DatasetError(f"dataset {data.name}: {exc}") from exc

    def feats(x: FloatArray) -> FloatArray:
        return mfcc(x.reshape(len(x), samples), spec) if len(x) else _empty(spec, samples)

    return replace(
        data,
        x_train=feats(data.x_train),
        x_val=feats(data.x_val),
        x_test=feats(data.x_test),
        frontend=spec.to_dict(),
        raw_shape=(samples,),
        x_test_raw=data.x_test.reshape(len(data.x_test), samples),
    )


def _empty(spec: FrontendSpec, samples: int) -> FloatArray:
    return np.zeros((0, 1, *spec.output_shape(samples)), dtype=np.float32)
