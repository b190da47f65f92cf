"""Run (or reach) a Flower SuperLink and submit our ServerApp/ClientApp to it.

* :class:`SuperLinkSupervisor` keeps a local ``flower-superlink`` alive (restarted if it dies,
  its whole process group stopped with it); pass ``--superlink HOST:PORT`` to the CLI instead
  to use an external one.
* :func:`write_app` writes the Flower App directory by hand (``flwr new`` needs the network):
  a ``pyproject.toml`` whose components point at our installed modules, so the SuperLink can
  run it with ``--disable-runtime-dependency-installation`` (no network at run time).
* :func:`submit` runs ``flwr run APP CONNECTION`` with a private ``FLWR_HOME`` holding the
  connection (Flower 1.41 reads connections from ``$FLWR_HOME/config.toml``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from edgefleet.fl.contract import FAST_POLL_ENV
from edgefleet.fl.process import (
    FlowerTls,
    SupervisedProcess,
    flower_bin,
    toml_value,
    with_flower_path,
)

__all__ = [
    "OUR_COMPONENTS",
    "SuperLinkSupervisor",
    "flwr_env",
    "free_port",
    "stop_run",
    "submit",
    "superlink_tls",
    "wait_listening",
    "write_app",
]

OUR_COMPONENTS = {
    "serverapp": "edgefleet.flower.serverapp:app",
    "clientapp": "edgefleet.agent.fl.clientapp:app",
}


class SuperLinkSupervisor(SupervisedProcess):
    """A local ``flower-superlink``, restarted if it dies.

    ``tls`` serves it with a certificate from the coordinator's CA; without it the SuperLink
    runs plaintext (loopback tests and benchmarks). ``pidfile`` lets a restarted coordinator
    adopt the SuperLink it started before it was killed, so runs in flight carry on.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int = 9093,
        host: str = "127.0.0.1",
        tls: FlowerTls | None = None,
        isolation: str = "subprocess",
        env: Mapping[str, str] | None = None,
        pidfile: Path | None = None,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.address = f"{host}:{port}"
        argv = [
            flower_bin("flower-superlink"),
            "--host", host, "--port", str(port),
            "--isolation", isolation,
            "--database", str(state_dir / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        argv += tls.superlink_args() if tls is not None else ["--insecure"]
        self.tls = tls
        super().__init__(
            argv, env={**FAST_POLL_ENV, **(env or {})}, log_path=state_dir / "superlink.log",
            name="superlink", pidfile=pidfile,
        )  # fmt: skip


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, timeout: float) -> bool:
    """Whether something accepts connections on ``host:port`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return True
        time.sleep(0.1)
    return False


def superlink_tls(tls_dir: Path, hosts: list[str]) -> FlowerTls:
    """The SuperLink's TLS files: the coordinator's CA (made in ``tls_dir`` if missing) and a
    server certificate for ``hosts`` -- the same CA agents already trust for gRPC."""
    from edgefleet.pki import CertificateAuthority

    ca = CertificateAuthority.load_or_create(tls_dir)
    ca.server_certificate(tls_dir, hosts)
    return FlowerTls(ca=tls_dir / "ca.pem", cert=tls_dir / "server.pem", key=tls_dir / "server.key")


def write_app(
    app_dir: Path,
    config: Mapping[str, object],
    components: Mapping[str, str] = OUR_COMPONENTS,
    name: str = "edgefleet-fl",
) -> Path:
    """Write a Flower App directory (``pyproject.toml`` + a marker module)."""
    app_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", f'name = "{name}"', 'version = "1.0.0"', "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "edgefleet"', "",
        "[tool.flwr.app.components]",
        *(f"{k} = {toml_value(v)}" for k, v in components.items()), "",
        "[tool.flwr.app.config]",
        *(f'"{k}" = {toml_value(v)}' for k, v in config.items()), "",
    ]  # fmt: skip
    (app_dir / "pyproject.toml").write_text("\n".join(lines))
    marker = app_dir / "edgefleet_fl_app.py"
    if not marker.exists():
        marker.write_text('"""Marker: this app runs modules installed with edgefleet."""\n')
    return app_dir


def flwr_env(home: Path, address: str, ca: Path | None = None) -> dict[str, str]:
    """Environment for the ``flwr`` CLI with a private FLWR_HOME naming one connection
    (verified against ``ca`` when given, plaintext otherwise)."""
    home = home.resolve()  # Flower 1.42 requires absolute paths in its configuration
    home.mkdir(parents=True, exist_ok=True)
    security = (
        f"root-certificates = {toml_value(str(ca.resolve()))}\n"
        if ca is not None
        else "insecure = true\n"
    )
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "edgefleet"\n\n[superlink.edgefleet]\n'
        f'address = "{address}"\n{security}'
    )
    return with_flower_path({**os.environ, **FAST_POLL_ENV, "FLWR_HOME": str(home)})


def submit(
    app_dir: Path,
    home: Path,
    address: str,
    run_config: Mapping[str, object] | None = None,
    ca: Path | None = None,
) -> int:
    """``flwr run`` the app on the SuperLink at ``address``; returns the run id."""
    argv = [flower_bin("flwr"), "run", str(app_dir.resolve()), "edgefleet", "--format", "json"]
    if run_config:
        argv += ["--run-config", " ".join(f"{k}={toml_value(v)}" for k, v in run_config.items())]
    proc = subprocess.run(
        argv, env=flwr_env(home, address, ca), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    text = proc.stdout.strip()
    try:
        doc = json.loads(text[text.index("{") :])
        if doc.get("success") and "run-id" in doc:
            return int(doc["run-id"])
    except (ValueError, KeyError):
        pass
    m = re.search(r"run[- ]id[\"':\s]+(\d+)", text, re.IGNORECASE)
    if proc.returncode == 0 and m:
        return int(m.group(1))
    raise RuntimeError(f"flwr run failed: {(proc.stdout + proc.stderr).strip()[-800:]}")


def stop_run(home: Path, address: str, run_id: int, ca: Path | None = None) -> None:
    """``flwr stop`` a run (the ServerApp and its ClientApps are torn down by Flower)."""
    proc = subprocess.run(
        [flower_bin("flwr"), "stop", str(run_id), "edgefleet"],
        env=flwr_env(home, address, ca), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"flwr stop failed: {(proc.stdout + proc.stderr).strip()[-400:]}")
