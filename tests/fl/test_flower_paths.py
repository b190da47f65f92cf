"""Flower 1.42 refuses relative paths in its connection config ("expected absolute path"): every
path we write into a Flower config or command line must be absolute, whatever the cwd."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from edgefleet.coordinator.fl.superlink import flwr_env
from edgefleet.fl.process import FlowerTls


def test_connection_config_names_absolute_paths_for_relative_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_text("x")
    env = flwr_env(Path("home"), "127.0.0.1:9093", Path("tls/ca.pem"))
    home = Path(env["FLWR_HOME"])
    assert home.is_absolute() and home == tmp_path / "home"
    config = tomllib.loads((home / "config.toml").read_text())
    ca = config["superlink"]["edgefleet"]["root-certificates"]
    assert os.path.isabs(ca) and Path(ca) == tmp_path / "tls" / "ca.pem"


def test_tls_arguments_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tls = FlowerTls(ca=Path("ca.pem"), cert=Path("s.pem"), key=Path("s.key"))
    for arg in [*tls.client_args(), *tls.superlink_args()]:
        if not arg.startswith("--"):
            assert os.path.isabs(arg), arg
