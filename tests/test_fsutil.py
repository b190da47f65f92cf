"""``edgefleet.fsutil``: the one crash-safe file replacement (``atomic_write``, ``atomic_replace``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edgefleet.fsutil import atomic_replace, atomic_write


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, '{"a": 1}')
    atomic_write(target, b'{"a": 2}')
    assert target.read_text() == '{"a": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_secret_is_created_private(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    atomic_write(target, b"secret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "index.json"
    atomic_write(target, "old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_atomic_replace_takes_any_writer_and_a_refusal_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "base.safetensors"
    atomic_write(target, "old")
    with pytest.raises(ValueError, match="digest"), atomic_replace(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(target.name)
        tmp.write_text("wrong")  # a writer that takes a file name, then its own check
        raise ValueError("digest mismatch")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["base.safetensors"]
    with atomic_replace(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["base.safetensors"]
