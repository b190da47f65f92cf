#!/usr/bin/env python3
"""Make, check and verify edgefleet's dependency locks (``locks/*.txt``).

Why pip-tools requirement files with hashes, and not ``uv.lock``: the only CPU build of
``torch==2.13.0`` this project can install offline is a local wheel that pip finds through its
``find-links`` configuration; uv and poetry do not read pip's configuration and would resolve a
multi-GB CUDA build. ``pip-compile --generate-hashes`` resolves with pip itself (so it sees the
same wheel), and ``pip install --require-hashes`` then refuses anything that is not the exact
file the lock names. Each lock starts with the sha256 of the ``pyproject.toml`` inputs it was
made from, so a changed dependency without a re-lock is caught without resolving anything.

    python scripts/lock.py                 # re-lock every profile (``make lock``; needs the index)
    python scripts/lock.py --check         # fail if pyproject.toml and the locks disagree (stdlib only)
    python scripts/lock.py --verify-env dev  # fail if this interpreter's packages differ from a lock

Profiles (one lock each, because an agent-only install must stay light):

    dev                   everything: ``make demo``, ``make test``, ``.ci/run``
    base                  the base install (the agent Docker image)
    agent                 base + agent-onnx + agent-mcu + agent-tflm + agent-litert (a Pi, a phone, an MCU's host)
    coordinator           base + coordinator (the coordinator Docker image)
    coordinator-compress  base + coordinator + compress (a coordinator image that builds variants)

Every profile other than ``dev`` is compiled with ``dev`` as a constraint, so one package has one
version across all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(os.environ.get("EDGEFLEET_LOCK_ROOT") or Path(__file__).resolve().parent.parent)
LOCKS = REPO / "locks"
PROFILES: dict[str, tuple[str, ...]] = {
    "dev": (
        "coordinator",
        "compress",
        "federated",
        "simulation",
        "agent-onnx",
        "agent-torch",
        "agent-mcu",
        "agent-tflm",
        "agent-litert",
        "docker",
        "dev",
    ),
    "base": (),
    "agent": ("agent-onnx", "agent-mcu", "agent-tflm", "agent-litert"),
    "coordinator": ("coordinator",),
    "coordinator-compress": ("coordinator", "compress"),
}
# Installed beside the dependencies so the project itself installs without build isolation
# (which would fetch unpinned build tools from the index).
BUILD_TOOLS = ("setuptools>=68", "wheel")
HASH_LINE = "# pyproject-inputs-sha256: "
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
RELOCK_HINT = "run `make lock` (python scripts/lock.py) and commit locks/"


def profile_inputs(pyproject: dict[str, object], profile: str) -> list[str]:
    """The requirement strings a profile is resolved from, in a stable order."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    reqs: list[str] = list(project["dependencies"])
    optional = project.get("optional-dependencies", {})
    for extra in PROFILES[profile]:
        if extra not in optional:
            raise SystemExit(f"error: pyproject.toml has no extra {extra!r} (profile {profile})")
        reqs += optional[extra]
    reqs += BUILD_TOOLS
    return sorted(dict.fromkeys(reqs))


def inputs_digest(pyproject: dict[str, object], profile: str) -> str:
    project = pyproject["project"]
    assert isinstance(project, dict)
    blob = {
        "requires-python": project.get("requires-python"),
        "reqs": profile_inputs(pyproject, profile),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def load_pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def lock_path(profile: str) -> Path:
    return LOCKS / f"{profile}.txt"


def read_pins(path: Path) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line in a lock."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[normalize(m.group(1))] = m.group(2)
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def compile_profile(profile: str, pip_compile: str, upgrade: bool = False) -> None:
    pyproject = load_pyproject()
    LOCKS.mkdir(exist_ok=True)
    out = lock_path(profile)
    with tempfile.TemporaryDirectory() as tmp:
        req_in = Path(tmp) / f"{profile}.in"
        lines = profile_inputs(pyproject, profile)
        if profile != "dev":
            lines.append(f"-c {lock_path('dev')}")
        req_in.write_text("\n".join(lines) + "\n")
        tmp_out = Path(tmp) / f"{profile}.txt"
        if out.is_file() and not upgrade:  # pip-compile keeps the pins it finds there
            tmp_out.write_text(out.read_text())
        cmd = [
            pip_compile,
            "--quiet",
            "--generate-hashes",
            "--allow-unsafe",
            "--strip-extras",
            "--no-emit-index-url",
            "--no-emit-find-links",
            "--no-header",
            "--annotation-style=line",
            *(["--upgrade"] if upgrade else []),
            "--output-file",
            str(tmp_out),
            str(req_in),
        ]
        print(f"lock: {profile}: {' '.join(cmd[1:4])} ...", file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, cwd=tmp)
        body = tmp_out.read_text()
    # pip-compile names the temporary input file in its annotations; name the profile instead.
    body = body.replace(str(req_in), f"{profile}.in").replace(
        str(lock_path("dev")), "locks/dev.txt"
    )
    header = (
        f"# edgefleet lock: profile {profile!r} = base dependencies"
        + (f" + [{','.join(PROFILES[profile])}]" if PROFILES[profile] else "")
        + "\n# Made by `make lock` (scripts/lock.py, pip-compile --generate-hashes); do not edit.\n"
        f"# Resolved for CPython {sys.version_info.major}.{sys.version_info.minor} on Linux x86_64.\n"
        f"{HASH_LINE}{inputs_digest(pyproject, profile)}\n"
    )
    out.write_text(header + body)
    print(f"lock: wrote {out.relative_to(REPO)} ({len(read_pins(out))} pins)", file=sys.stderr)


def check() -> int:
    """Every lock exists and was made from the current pyproject.toml inputs."""
    pyproject = load_pyproject()
    stale: list[str] = []
    for profile in PROFILES:
        path = lock_path(profile)
        if not path.is_file():
            stale.append(f"{path.relative_to(REPO)} is missing")
            continue
        recorded = next(
            (
                ln[len(HASH_LINE) :].strip()
                for ln in path.read_text().splitlines()
                if ln.startswith(HASH_LINE)
            ),
            None,
        )
        if recorded != inputs_digest(pyproject, profile):
            stale.append(f"{path.relative_to(REPO)} was not made from the current pyproject.toml")
    if stale:
        for why in stale:
            print(f"error: {why}", file=sys.stderr)
        print(f"error: the locks disagree with pyproject.toml: {RELOCK_HINT}", file=sys.stderr)
        return 1
    print(f"locks: {len(PROFILES)} profiles match pyproject.toml")
    return 0


def verify_env(profile: str) -> int:
    """This interpreter has exactly the lock's versions of every package the lock pins."""
    pins = read_pins(lock_path(profile))
    wrong: list[str] = []
    for name, version in sorted(pins.items()):
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (lock: {version})")
            continue
        if have != version:
            wrong.append(f"{name}: {have} installed, lock says {version}")
    if wrong:
        for why in wrong:
            print(f"error: {why}", file=sys.stderr)
        print(f"error: the environment differs from locks/{profile}.txt", file=sys.stderr)
        return 1
    print(
        f"locks: environment matches locks/{profile}.txt ({len(pins)} packages, hashes checked by pip)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--check", action="store_true", help="fail if pyproject.toml and the locks disagree"
    )
    group.add_argument(
        "--verify-env",
        metavar="PROFILE",
        choices=sorted(PROFILES),
        help="compare installed packages with a lock",
    )
    parser.add_argument(
        "--profile", action="append", choices=sorted(PROFILES), help="re-lock only these profiles"
    )
    parser.add_argument(
        "--upgrade", action="store_true", help="take the newest allowed versions (else keep pins)"
    )
    parser.add_argument("--pip-compile", default=shutil.which("pip-compile") or "pip-compile")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    if args.verify_env:
        return verify_env(args.verify_env)
    profiles = args.profile or list(PROFILES)
    if "dev" in profiles:  # the others are constrained by it: make it first
        profiles = ["dev", *[p for p in profiles if p != "dev"]]
    for profile in profiles:
        compile_profile(profile, args.pip_compile, upgrade=args.upgrade)
    return check()


if __name__ == "__main__":
    sys.exit(main())
