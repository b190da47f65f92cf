"""Datasets as data: user ``.npz`` files and folders of ``.wav``/images per label.

Shared and light (numpy at module level; pillow only when images are loaded). Everything a model
is trained and measured on is a :class:`Dataset`: checked, split once (seeded, stratified,
group-aware) and hashed, so every variant of a model is measured on the same test rows.
:func:`load_kws` is the built-in keyword-spotting set, synthesized offline with espeak-ng and cached.
"""

from edgefleet.datasets.core import (
    SPLIT_NAMES,
    SPLIT_SEED,
    Dataset,
    DatasetError,
    content_hash,
    make_dataset,
    split_rows,
)
from edgefleet.datasets.kws import KWS_SIZES, KwsSpec, generate_kws, load_kws
from edgefleet.datasets.loaders import (
    load_audio_dir,
    load_image_dir,
    load_npz,
    load_path,
    save_npz,
)

__all__ = [
    "KWS_SIZES",
    "SPLIT_NAMES",
    "SPLIT_SEED",
    "Dataset",
    "DatasetError",
    "KwsSpec",
    "content_hash",
    "generate_kws",
    "load_audio_dir",
    "load_image_dir",
    "load_kws",
    "load_npz",
    "load_path",
    "make_dataset",
    "save_npz",
    "split_rows",
]
