"""Loaders: an ``.npz``, a folder of ``.wav`` per label, a folder of images per label.

Each returns a checked, split and hashed :class:`~edgefleet.datasets.core.Dataset` or raises
one :class:`~edgefleet.datasets.core.DatasetError` line naming the file or field at fault.
Pillow is imported only when images are loaded.
"""

from __future__ import annotations

import wave
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.datasets.core import Dataset, DatasetError, make_dataset

__all__ = [
    "IMAGE_SUFFIXES",
    "load_audio_dir",
    "load_image_dir",
    "load_npz",
    "load_path",
    "save_npz",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_npz(path: Path, name: str | None = None) -> Dataset:
    """``x`` (N, ...) numeric, ``y`` (N,) integer; optional ``split``, ``groups``, ``classes``
    (label names, indexed by ``y``), ``source`` (where a :func:`save_npz` copy came from) and
    ``input_scale`` (what a device multiplies raw values by to get ``x``; default 1)."""
    where = path.name
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if magic != b"PK\x03\x04":
        raise DatasetError(f"{where}: not a readable .npz (not a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            for key in ("x", "y"):
                if key not in keys:
                    has = ", ".join(sorted(keys)) or "nothing"
                    raise DatasetError(f"{where}: missing array {key!r} (has: {has})")
            arrays: dict[str, npt.NDArray[Any]] = {
                k: z[k]
                for k in ("x", "y", "split", "groups", "classes", "source", "input_scale")
                if k in keys
            }
    except DatasetError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DatasetError(
                f"{where}: an array holds Python objects (mixed shapes?); need plain arrays"
            ) from exc
        raise DatasetError(f"{where}: not a readable .npz: {exc}") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{where}: not a readable .npz: {exc}") from exc
    classes = arrays.get("classes")
    source = arrays.get("source")  # where a saved copy came from (save_npz)
    return make_dataset(
        name or path.stem,
        str(path) if source is None else str(source),
        arrays["x"],
        arrays["y"],
        classes=None if classes is None else [str(c) for c in classes.tolist()],
        groups=arrays.get("groups"),
        split=arrays.get("split"),
        input_scale=float(arrays.get("input_scale", 1.0)),
        where=where,
    )


def _label_dirs(root: Path, suffixes: tuple[str, ...]) -> list[tuple[str, list[Path]]]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DatasetError(f"{root}: no label folders (need {root.name}/<label>/*{suffixes[0]})")
    out = []
    for d in dirs:
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
        if not files:
            raise DatasetError(f"{d}: no {'/'.join(suffixes)} files")
        out.append((d.name, files))
    return out


def load_audio_dir(
    root: Path, *, rate: int = 16000, window_s: float = 1.0, name: str | None = None
) -> Dataset:
    """``root/<label>/*.wav``, mono 16-bit PCM at ``rate``, cut into ``window_s`` windows.

    A recording shorter than a window is zero-padded; a longer one gives every full window (the
    tail is dropped). All windows of one file form one group, so a recording is never split
    between training and test. Rows are (1, 1, window) float32 in [-1, 1).
    """
    window = round(rate * window_s)
    if window < 1:
        raise DatasetError(f"{root}: window of {window_s} s at {rate} Hz holds no samples")
    xs: list[npt.NDArray[np.float32]] = []
    ys: list[int] = []
    groups: list[str] = []
    labels = _label_dirs(root, (".wav",))
    for index, (_, files) in enumerate(labels):
        for f in files:
            rel = f"{f.parent.name}/{f.name}"
            try:
                with wave.open(str(f), "rb") as w:
                    channels, width, fr = w.getnchannels(), w.getsampwidth(), w.getframerate()
                    raw = w.readframes(w.getnframes())
            except (wave.Error, EOFError, OSError) as exc:
                raise DatasetError(f"{rel}: cannot decode as WAV: {exc}") from exc
            if fr != rate:
                raise DatasetError(f"{rel}: sample rate {fr} Hz, expected {rate} Hz")
            if channels != 1:
                raise DatasetError(f"{rel}: {channels} channels, expected mono")
            if width != 2:
                raise DatasetError(f"{rel}: {8 * width}-bit samples, expected 16-bit PCM")
            samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
            if len(samples) == 0:
                raise DatasetError(f"{rel}: no samples")
            n = max(1, len(samples) // window)
            padded = np.zeros(n * window, dtype=np.float32)
            padded[: min(len(samples), n * window)] = samples[: n * window]
            xs.append(padded.reshape(n, 1, 1, window))
            ys += [index] * n
            groups += [rel] * n
    return make_dataset(
        name or root.name,
        str(root),
        np.concatenate(xs),
        np.asarray(ys, dtype=np.int64),
        classes=[label for label, _ in labels],
        groups=np.asarray(groups),
        input_scale=1.0 / 32768.0,  # a device feeds int16 samples times this
        where=root.name,
    )


def load_image_dir(
    root: Path, *, size: tuple[int, int] = (32, 32), mode: str = "L", name: str | None = None
) -> Dataset:
    """``root/<label>/*.png|jpg`` resized to ``size`` (height, width); ``mode`` ``L`` or ``RGB``.

    Rows are (C, H, W) float32 in [0, 1] (C = 1 for grayscale, 3 for RGB).
    """
    if mode not in ("L", "RGB"):
        raise DatasetError(f"image mode {mode!r}: use L (grayscale) or RGB")
    from PIL import Image, UnidentifiedImageError

    h, w = size
    xs: list[npt.NDArray[np.float32]] = []
    ys: list[int] = []
    labels = _label_dirs(root, IMAGE_SUFFIXES)
    for index, (_, files) in enumerate(labels):
        for f in files:
            try:
                with Image.open(f) as img:
                    pixels = np.asarray(
                        img.convert(mode).resize((w, h), Image.Resampling.BILINEAR),
                        dtype=np.float32,
                    )
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DatasetError(f"{f.parent.name}/{f.name}: cannot decode image: {exc}") from exc
            xs.append(
                (pixels / 255.0)[None] if mode == "L" else (pixels / 255.0).transpose(2, 0, 1)
            )
            ys.append(index)
    return make_dataset(
        name or root.name,
        str(root),
        np.stack(xs),
        np.asarray(ys, dtype=np.int64),
        classes=[label for label, _ in labels],
        input_scale=1.0 / 255.0,  # a device feeds 8-bit pixels times this
        where=root.name,
    )


def load_path(
    path: Path,
    *,
    rate: int = 16000,
    window_s: float = 1.0,
    size: tuple[int, int] = (32, 32),
    mode: str = "L",
) -> Dataset:
    """An ``.npz`` file, or a folder of ``.wav`` or image files per label (told apart by content).

    ``rate``/``window_s`` apply to audio folders, ``size`` (height, width)/``mode`` to images.
    """
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DatasetError(f"{path.name}: a dataset file must be an .npz")
        return load_npz(path)
    found = {f.suffix.lower() for f in path.glob("*/*") if f.is_file()}
    if found & set(IMAGE_SUFFIXES) and ".wav" not in found:
        return load_image_dir(path, size=size, mode=mode)
    return load_audio_dir(path, rate=rate, window_s=window_s)  # or says which folder is empty


def save_npz(data: Dataset, path: Path, *, compress: bool = True) -> None:
    """Write ``data`` with its split (and groups, classes) as an ``.npz`` that loads back equal.

    ``compress=False`` trades disk for time: zlib costs ~8 s of CPU per 1,000 one-second clips.
    """
    arrays: dict[str, npt.NDArray[Any]] = {
        "x": data.x,
        "y": data.y,
        "classes": np.asarray(data.classes),
        "split": data.split_labels(),
        "source": np.asarray(data.source),
        "input_scale": np.asarray(data.input_scale, dtype=np.float64),
    }
    if data.groups is not None:
        arrays["groups"] = data.groups
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)
