"""The variant store: signed bundles in content-addressed directories, and a JSON model index.

Layout under the data dir (``--data-dir`` / ``EDGEFLEET_DATA_DIR`` / ``./.edgefleet``)::

    signing-key.pem        ed25519 private key, created on first use, mode 0600
    signing-key.pub        its public half (what agents are told to trust)
    variants/<sha256>/     one immutable bundle per variant (see ``edgefleet.bundle``)
    models.json            the index: model name -> architecture, base variant, variants

Plain files on purpose: the coordinator's Redis state refers to variants by id and reads the
bytes from here; nothing in this module needs a server. Bundles are written to a temporary
directory and renamed into place, and the index is replaced atomically under a lock, so a
crash never leaves a half-written variant visible or a torn index.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefleet.bundle import Bundle, load_bundle, write_bundle
from edgefleet.fsutil import atomic_write

__all__ = [
    "DEFAULT_DATA_DIR",
    "ModelEntry",
    "StoreError",
    "UnknownModelError",
    "UnknownVariantError",
    "VariantStore",
    "resolve_data_dir",
]

DEFAULT_DATA_DIR = Path(".edgefleet")
INDEX_VERSION = 1


class StoreError(Exception):
    """A store operation that cannot be done as asked."""


class UnknownModelError(StoreError):
    pass


class UnknownVariantError(StoreError):
    pass


def resolve_data_dir(explicit: str | os.PathLike[str] | None) -> Path:
    """``--data-dir`` if given, else ``$EDGEFLEET_DATA_DIR``, else ``./.edgefleet``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("EDGEFLEET_DATA_DIR")
    return Path(env) if env else DEFAULT_DATA_DIR


@dataclass
class ModelEntry:
    """One registered model: how its base was made, and the variants built from it."""

    name: str
    architecture: dict[str, Any]
    dataset: str
    base: str
    variants: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.architecture,
            "dataset": self.dataset,
            "base": self.base,
            "variants": list(self.variants),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelEntry:
        return cls(
            name=str(data["name"]),
            architecture=dict(data["architecture"]),
            dataset=str(data["dataset"]),
            base=str(data["base"]),
            variants=[str(v) for v in data.get("variants", [])],
            source=dict(data.get("source", {})),
        )


class VariantStore:
    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir)
        self.variants_dir = self.root / "variants"
        self.index_path = self.root / "models.json"
        self.key_path = self.root / "signing-key.pem"

    # --- keys -------------------------------------------------------------------------

    def signing_key(self) -> Ed25519PrivateKey:
        """The store's private key; generated with 0600 permissions the first time."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.key_path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process won the race; use its key
                pass
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
                pub = key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                (self.root / "signing-key.pub").write_bytes(pub)
        loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise StoreError(f"{self.key_path} is not an ed25519 private key")
        return loaded

    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key().public_key()

    # --- bundles ----------------------------------------------------------------------

    def put(self, manifest_body: Mapping[str, Any], files: Mapping[str, bytes]) -> str:
        """Sign and store a bundle; return its content address (idempotent)."""
        key = self.signing_key()
        self.variants_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.variants_dir))
        staging = tmp / "bundle"
        variant_id = write_bundle(staging, manifest_body, files, key)
        final = self.variants_dir / variant_id
        try:
            os.rename(staging, final)
        except OSError:
            if not final.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return variant_id

    def resolve(self, prefix: str) -> str:
        """Full variant id from an id or an unambiguous prefix (at least 6 hex digits)."""
        prefix = prefix.strip().lower()
        if len(prefix) < 6:
            raise UnknownVariantError(f"variant id {prefix!r} is too short (give 6+ hex digits)")
        if not self.variants_dir.is_dir():
            raise UnknownVariantError(f"unknown variant {prefix!r}")
        hits = [p.name for p in self.variants_dir.iterdir() if p.name.startswith(prefix)]
        if not hits:
            raise UnknownVariantError(f"unknown variant {prefix!r}")
        if len(hits) > 1:
            raise UnknownVariantError(f"variant prefix {prefix!r} is ambiguous ({len(hits)} match)")
        return hits[0]

    def load(self, variant: str) -> Bundle:
        """Load and fully verify a bundle (hash, signature, every file) by id or prefix."""
        variant_id = self.resolve(variant)
        return load_bundle(self.variants_dir / variant_id, [self.public_key()], variant_id)

    # --- index ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".index.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        if not self.index_path.exists():
            return {"version": INDEX_VERSION, "models": {}}
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"model index {self.index_path} is unreadable: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != INDEX_VERSION:
            raise StoreError(f"model index {self.index_path} has an unknown version")
        return data

    def _write_index(self, data: Mapping[str, Any]) -> None:
        atomic_write(self.index_path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def models(self) -> list[ModelEntry]:
        return [ModelEntry.from_json(m) for m in self._read_index()["models"].values()]

    def model(self, name: str) -> ModelEntry:
        data = self._read_index()["models"].get(name)
        if data is None:
            raise UnknownModelError(f"unknown model {name!r} (see `edgefleet models ls`)")
        return ModelEntry.from_json(data)

    def add_model(self, entry: ModelEntry) -> None:
        with self._locked():
            index = self._read_index()
            if entry.name in index["models"]:
                raise StoreError(f"model {entry.name!r} already exists")
            index["models"][entry.name] = entry.to_json()
            self._write_index(index)

    def add_variant(self, name: str, variant_id: str) -> None:
        with self._locked():
            index = self._read_index()
            model = index["models"].get(name)
            if model is None:
                raise UnknownModelError(f"unknown model {name!r}")
            if variant_id not in model["variants"]:
                model["variants"].append(variant_id)
            self._write_index(index)
