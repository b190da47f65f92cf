"""The end-to-end demo behind ``make demo``: a coordinator and a mixed simulated fleet.

It runs everything for real (a coordinator process with its embedded Redis and
one agent process per device), prints the fleet as an operator would see it,
and tears it all down. Later features extend this script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from coordinator.admin_client import AdminClient, AdminClientError
from coordinator.cli import render
from coordinator.simulate import SimulatedFleet
from coordinator.tokens import ADMIN_TOKEN_FILE, ENROLL_TOKEN_FILE

DEMO_PROFILES = (
    "phone-flagship",
    "phone-budget",
    "rpi4",
    "rpi-zero2w",
    "jetson-nano",
    "cortex-m7",
    "cortex-m4",
    "esp32-s3",
)


def start_coordinator_process(
    data_dir: Path, extra_args: list[str] | None = None, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``edgefleet coordinator start --port 0`` and return it with its address."""
    info = data_dir / "coordinator.json"
    info.unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "coordinator.log").open("ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator.cli.main",
            "coordinator",
            "start",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--metrics-port",
            "0",
            *(extra_args or []),
        ],
        stdout=log,
        stderr=log,
        env=env,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AdminClientError(
                f"coordinator exited with {proc.returncode}; see {data_dir / 'coordinator.log'}"
            )
        if info.exists():
            return proc, str(json.loads(info.read_text())["address"])
        time.sleep(0.1)
    proc.kill()
    raise AdminClientError(f"coordinator did not start within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def run_demo(
    *, devices: int, data_dir: Path, console: Console, err_console: Console, as_json: bool
) -> None:
    from coordinator.cli.main import wait_until_online

    if data_dir.exists():
        shutil.rmtree(data_dir)
    err_console.print(f"[bold]1/3[/bold] starting a coordinator (state in {data_dir})")
    coordinator, address = start_coordinator_process(data_dir)
    fleet: SimulatedFleet | None = None
    try:
        admin = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        enroll = (data_dir / ENROLL_TOKEN_FILE).read_text().strip()
        err_console.print(
            f"[bold]2/3[/bold] starting {devices} simulated devices against {address}"
        )
        fleet = SimulatedFleet.start(
            coordinator=address,
            enroll_token=enroll,
            profiles=DEMO_PROFILES,
            count=devices,
            state_root=data_dir / "agents",
        )
        with AdminClient(address, admin) as client:
            wait_until_online(client, {a.name for a in fleet.agents}, timeout=60)
            listed = client.list_devices()
            summary = client.fleet_summary()
        err_console.print("[bold]3/3[/bold] the fleet as the coordinator sees it")
        if as_json:
            sys.stdout.write(
                json.dumps(
                    {
                        "devices": [render.device_to_dict(d) for d in listed],
                        "summary": render.summary_to_dict(summary),
                    },
                    indent=2,
                )
                + "\n"
            )
        else:
            console.print(render.devices_table(listed))
            console.print(render.summary_table(summary))
    finally:
        if fleet is not None:
            report = fleet.stop()
            err_console.print(f"stopped {len(fleet.agents)} agents ({report.clean} clean)")
        code = stop_process(coordinator)
        err_console.print(f"stopped the coordinator (exit {code})")
