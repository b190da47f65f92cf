"""A simulation submitted the way Flower 1.42 recommends: ``flwr run`` of a Flower App against a
SuperLink in simulation mode, instead of the deprecated ``flwr.simulation.run_simulation``.

What that path is (read in ``flwr/cli/local_superlink.py`` and ``flwr/simulation/app.py``):
``flwr run APP CONNECTION`` builds a FAB from the app directory and starts a run on the
SuperLink's Control API; a ``flower-superlink --simulation`` hands it to its SuperExec, which
starts one ``flwr-simulation`` process per run; that process installs the FAB, reads the
federation config (``num-supernodes``, Ray's CPUs) and runs the Simulation Engine on Ray with
the app's ServerApp and ClientApp loaded by name, the run config fused into every Context.

Why our apps run unchanged on it: the only thing ``run_simulation``'s Python API gave us that
a FAB cannot carry is objects built in our process -- the ServerApp holding its settings and a
ClientApp holding the fleet table's path. On this path both come from the run config instead
(:data:`edgefleet.devtools.fl_sim.server_app` reads :class:`RunSettings` from it as our real
ServerApp does; :data:`edgefleet.devtools.fl_sim.client_app` reads the table's path,
``sim-fleet``), and each virtual node still gets only its ``partition-id``, which the ClientApp
resolves to its device's node_config as before.

What it costs: a SuperLink process we start (and stop) per simulation, the FAB's build and
install, and ``flwr-simulation`` starting Ray itself -- so our retry of Ray's fixed 30 s
start-up deadline cannot wrap it (the stretched registration timeouts still reach it through
the environment). The SuperLink is our child, so the process tree (and its peak RSS) holds
everything: SuperLink, SuperExec, ``flwr-simulation``, Ray and its actors.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.flower.run_settings import RunSettings

__all__ = ["SIM_COMPONENTS", "SIM_DEVICES", "SIM_FLEET", "run_on_superlink"]

#: run config keys of a simulation submitted as a Flower App (``flwr run``): where the
#: node_config table is, and how many virtual nodes to wait for
SIM_FLEET = "sim-fleet"
SIM_DEVICES = "sim-devices"
SIM_COMPONENTS = {
    "serverapp": "edgefleet.devtools.fl_sim:server_app",
    "clientapp": "edgefleet.devtools.fl_sim:client_app",
}


def _run_config(settings: RunSettings, extra: Mapping[str, object]) -> dict[str, object]:
    """The run settings as a run config (kebab-case keys), plus ``extra``."""
    cfg = {k.replace("_", "-"): v for k, v in asdict(settings).items()}
    return {**cfg, **extra}


def _simulation_running(root_pid: int) -> bool:
    """Whether a ``flwr-simulation`` process runs under ``root_pid`` (the SuperLink)."""
    import psutil

    try:
        children = psutil.Process(root_pid).children(recursive=True)
    except psutil.Error:
        return False
    for proc in children:
        with contextlib.suppress(psutil.Error):
            if any("flwr-simulation" in part for part in proc.cmdline()):
                return True
    return False


def _tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


def run_on_superlink(
    root: Path,
    settings: RunSettings,
    devices: int,
    cpus: int,
    fleet_path: Path,
    *,
    deadline_s: float,
    verbose: bool = False,
) -> int:
    """Submit the simulation under ``root`` to a SuperLink started for it; wait until the
    ServerApp's record says the run ended; returns Flower's run id.

    Raises ``RuntimeError`` (one line, the SuperLink log's tail) when the run never started
    its ServerApp, or ``TimeoutError`` past ``deadline_s``.
    """
    import json

    from edgefleet.coordinator.fl.superlink import flwr_env, free_port, wait_listening, write_app
    from edgefleet.fl.process import flower_bin, with_flower_path

    app = write_app(
        root / "app",
        _run_config(settings, {SIM_FLEET: str(fleet_path), SIM_DEVICES: devices}),
        SIM_COMPONENTS,
        name="edgefleet-sim",
    )
    port = free_port()
    log_path = root / "superlink.log"
    env = with_flower_path({**os.environ, "FLWR_HOME": str((root / "flwr-home").resolve())})
    argv = [
        flower_bin("flower-superlink"), "--insecure", "--simulation",
        "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        superlink = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        if not wait_listening("127.0.0.1", port, 120.0):
            raise RuntimeError(f"the simulation SuperLink did not start: {_tail(log_path)}")
        federation = (
            f"num-supernodes={devices} client-resources-num-cpus=1 "
            f"client-resources-num-gpus=0.0 init-args-num-cpus={cpus} init-args-num-gpus=0 "
            f"verbose={'true' if verbose else 'false'}"
        )
        cmd = [flower_bin("flwr"), "run", str(app.resolve()), "edgefleet", "--format", "json"]
        cmd += ["--federation-config", federation]
        proc = subprocess.run(
            cmd, env=flwr_env(root / "flwr-home", f"127.0.0.1:{port}"), capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        text = proc.stdout.strip()
        try:
            doc = json.loads(text[text.index("{") :])
            run_id = int(doc["run-id"]) if doc.get("success") else 0
        except (ValueError, KeyError, TypeError):
            run_id = 0
        if not run_id:
            raise RuntimeError(f"flwr run failed: {(text + proc.stderr).strip()[-400:]}")
        _wait_for_record(root / "run" / "progress.json", superlink.pid, log_path, deadline_s)
        return run_id
    finally:
        _stop_tree(superlink)


def _stop_tree(root: subprocess.Popen[bytes]) -> None:
    """Stop the SuperLink and everything under it (its SuperExec and a run's ``flwr-simulation``
    start in sessions of their own, so a process group would miss them)."""
    import psutil

    try:
        procs = [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
    except psutil.Error:
        procs = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=60)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        root.wait(10)


def _wait_for_record(progress: Path, superlink_pid: int, log_path: Path, deadline_s: float) -> None:
    """Until the record says the run ended; a ``flwr-simulation`` process that is gone while
    the record still says otherwise (or was never written) is a failed run."""
    import json

    deadline = time.monotonic() + deadline_s
    seen = False
    gone_since: float | None = None
    while time.monotonic() < deadline:
        try:
            state = json.loads(progress.read_text()).get("state")
        except (OSError, ValueError):
            state = None  # not written yet (written atomically: never torn)
        if state not in (None, "running"):
            return
        running = _simulation_running(superlink_pid)
        seen = seen or running
        if seen and not running:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 5.0:  # the record's last write may lag
                raise RuntimeError(
                    f"the simulation process ended without finishing the run: {_tail(log_path)}"
                )
        else:
            gone_since = None
        time.sleep(0.5)
    raise TimeoutError(f"the simulated run did not finish within {deadline_s:.0f}s")
