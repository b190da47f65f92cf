"""Run a local fleet of real agent processes, for demos, tests and experiments.

Each simulated device is a separate ``edgefleet-agent`` process with its own
state dir (so re-running a simulation brings back the same devices) and its
own log file. Profiles are assigned round-robin so a mixed fleet is easy to ask
for. The enrollment token reaches each agent through a token file or the
environment, never its command line (``/proc/PID/cmdline`` is world-readable).
Stopping sends SIGTERM (agents say goodbye and exit 0) and only kills what does
not exit in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.catalog import get_profile
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
    ) -> SimulatedFleet:
        if count < 1:
            raise ValueError("--devices must be at least 1")
        if not profiles:
            raise ValueError("--profiles needs at least one profile name")
        for name in profiles:
            get_profile(name)  # fail before starting anything
        state_root.mkdir(parents=True, exist_ok=True)
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
                "agent",
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
                *extra_args,
                *(extra_args_by_index or {}).get(i, ()),
            ]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
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
