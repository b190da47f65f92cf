"""Shared fixtures: one small trained base model and a store with a few variants, per session.

Everything is trained for real (DS-CNN width 0.5 on digits, a few epochs) and measured with
few latency runs, so the whole directory stays within a couple of minutes on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgefleet.modelops.build import BuildOptions, build_variants, register_model
from edgefleet.modelops.data import Dataset, load_dataset
from edgefleet.modelops.measure import LatencyConfig
from edgefleet.variant_store import VariantStore
from edgefleet.zoo import ArchitectureSpec

MODEL = "digits-dscnn"
RECIPES = {
    "int8": "int8-static",
    "fp16": "fp16",
    "pruned_int8": "prune-channels:ratio=0.5:epochs=4+int8-static",
    "unstructured": "prune-unstructured:sparsity=0.5:epochs=2",
    "distilled": "distill:width=0.5:epochs=12",
    "low_rank": "low-rank:energy=0.8:epochs=2",
}


@dataclass(frozen=True)
class BuiltModel:
    store: VariantStore
    base: str
    ids: dict[str, str]


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltModel]:
    store = VariantStore(tmp_path_factory.mktemp("edgefleet-data"))
    options = BuildOptions(latency=LatencyConfig(warmup=5, runs=30))
    spec = ArchitectureSpec.zoo("ds-cnn", width=0.5)
    entry = register_model(store, MODEL, spec, "digits", epochs=10, options=options)
    ids = build_variants(store, MODEL, list(RECIPES.values()), options=options)
    yield BuiltModel(store, entry.base, dict(zip(RECIPES, ids, strict=True)))


@pytest.fixture
def store_copy(built: BuiltModel, tmp_path: Path) -> VariantStore:
    """A private copy of the built store, for tests that tamper with it."""
    import shutil

    dst = tmp_path / "data"
    shutil.copytree(built.store.root, dst)
    return VariantStore(dst)
