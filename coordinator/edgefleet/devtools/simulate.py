"""Run a local fleet of real agent processes, for demos, tests and experiments.

Each simulated device is a separate ``edgefleet-agent`` process with its own
state dir (so re-running a simulation brings back the same devices) and its
own log file. Profiles are assigned round-robin so a mixed fleet is easy to ask
for. The enrollment token reaches each agent through a token file or the
environment, never its command line (``/proc/PID/cmdline`` is world-readable).
Stopping sends SIGTERM (agents say goodbye and exit 0) and only kills what does
not exit in time.

With ``local_data`` each device gets its own part of the dataset -- ``digits``: a
Dirichlet partition the agent makes itself (``--partition i/N``); ``kws`` (``kws:tiny``
for a size) or a user's ``.npz`` with ``groups``: whole speakers/groups per device, written
as shard files before the agents start (:mod:`.sim_data`) -- and, with ``workload_rate``,
replays it as requests: a simulated fleet then
serves, reports inference counts and accuracy (so rollout gates have evidence to
judge), and joins federated rounds like the demo's devices. Agents are started so
that they get SIGTERM if the process that started them dies, whatever killed it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.catalog import get_profile
from edgefleet.devtools.sim_data import group_local_data, is_grouped_source, is_text_source
from edgefleet.tokenfile import ENROLL_TOKEN_FILE_ENV

ENROLL_TOKEN_ENV = "EDGEFLEET_ENROLL_TOKEN"


@dataclass
class SimulatedAgent:
    name: str
    profile: str
    state_dir: Path
    process: subprocess.Popen[bytes]


@dataclass
class StopReport:
    clean: int = 0
    failed: list[str] = field(default_factory=list)  # "name: exit code"
    killed: list[str] = field(default_factory=list)


@dataclass
class SimulatedFleet:
    agents: list[SimulatedAgent]

    @classmethod
    def start(
        cls,
        *,
        coordinator: str,
        enroll_token: str = "",
        token_file: Path | None = None,
        profiles: Sequence[str],
        count: int,
        state_root: Path,
        extra_args: Sequence[str] = (),
        labels_by_profile: Mapping[str, Mapping[str, str]] | None = None,
        extra_args_by_index: Mapping[int, Sequence[str]] | None = None,
        local_data: str = "",
        workload_rate: float = 0.0,
        data_dir: Path | None = None,
    ) -> SimulatedFleet:
        if count < 1:
            raise ValueError("--devices must be at least 1")
        if not profiles:
            raise ValueError("--profiles needs at least one profile name")
        for name in profiles:
            get_profile(name)  # fail before starting anything
        state_root.mkdir(parents=True, exist_ok=True)
        per_device = [local_data] * count
        if is_grouped_source(local_data):  # before any agent starts: bad data starts nothing
            grouped = group_local_data(
                local_data, count, state_root / "local-data", data_dir=data_dir
            )
            per_device = [str(p.resolve()) for p in grouped.paths]
        if is_text_source(local_data):
            workload_rate = 0.0  # text is a language model's to train on, not a classifier's
        env = _agent_env(enroll_token, token_file)
        agents = []
        for i in range(count):
            profile = profiles[i % len(profiles)]
            name = f"sim-{profile}-{i:03d}"
            state_dir = state_root / name
            state_dir.mkdir(parents=True, exist_ok=True)
            log = (state_dir / "agent.log").open("ab")
            cmd = [
                sys.executable,
                "-m",
                "edgefleet.agent",
                "--coordinator",
                coordinator,
                "--profile",
                profile,
                "--state-dir",
                str(state_dir),
                "--name",
                name,
                "--label",
                "simulated=true",
                *[
                    arg
                    for key, value in (labels_by_profile or {}).get(profile, {}).items()
                    for arg in ("--label", f"{key}={value}")
                ],
                *workload_args(per_device[i], workload_rate, i, count),
                *extra_args,
                *(extra_args_by_index or {}).get(i, ()),
            ]
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                preexec_fn=_terminate_with_parent,
            )
            log.close()
            agents.append(SimulatedAgent(name, profile, state_dir, proc))
        return cls(agents)

    def exited(self) -> list[SimulatedAgent]:
        return [a for a in self.agents if a.process.poll() is not None]

    def stop(self, timeout: float = 15.0) -> StopReport:
        report = StopReport()
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for agent in self.agents:
            try:
                code = agent.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()
                report.killed.append(agent.name)
                continue
            if code == 0:
                report.clean += 1
            else:
                report.failed.append(f"{agent.name}: exit {code}")
        return report


def interrupt_on_sigterm() -> None:
    """From now on the first SIGTERM raises KeyboardInterrupt (later ones are ignored), so
    ``kill`` (a service manager, a CI job's timeout) reaches the same clean stop of the fleet
    as Ctrl-C instead of leaving its agents running."""

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the stop finish
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def workload_args(local_data: str, rate: float, index: int, count: int) -> list[str]:
    """Agent flags for device ``index`` of ``count``: its part of ``local_data`` and the rate
    at which it replays it (none without local data)."""
    if not local_data:
        return []
    args = ["--local-data", local_data]
    if local_data == "digits":
        args += ["--partition", f"{index}/{count}"]
    if rate > 0:
        args += ["--workload-rate", f"{rate:g}"]
    return args


_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _agent_env(enroll_token: str, token_file: Path | None) -> dict[str, str]:
    """The agents' environment: the token file's path when there is one (the token itself
    then appears in no process's argv or environment), else the token."""
    env = {
        k: v for k, v in os.environ.items() if k not in (ENROLL_TOKEN_ENV, ENROLL_TOKEN_FILE_ENV)
    }
    env["PYTHONUNBUFFERED"] = "1"
    if token_file is not None:
        env[ENROLL_TOKEN_FILE_ENV] = str(token_file.resolve())
    elif enroll_token:
        env[ENROLL_TOKEN_ENV] = enroll_token
    return env
