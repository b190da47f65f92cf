#!/usr/bin/env python3
"""Build edgefleet's container images, on a connected laptop or on an offline machine.

Why a script and not just ``docker build``: an offline machine cannot pull ``python:3.11-slim``
(or anything else), and its pip reaches packages through a local certificate bundle, a
constraints file and a find-links directory that a container cannot see. So this script

1. makes a local Debian base image (``debootstrap --variant=minbase bookworm`` + ``docker
   import``) when ``--base-image`` names that local image and it does not exist yet;
2. copies what pip needs into ``deploy/docker/build-extras/`` (the CA bundle, a pip.conf
   rewritten to container paths, the constraints file and, for ``--compress``, the CPU torch
   wheel fetched on the host with ``pip download`` -- never the multi-GB CUDA wheel);
3. builds the coordinator, agent, redis and prometheus images with host networking;
4. always empties ``build-extras/`` again, so nothing copied is ever left to be committed.

Users with registry access run ``--base-image python:3.11-slim`` (or plain ``docker compose
build``); the Dockerfiles work with both bases.
"""

from __future__ import annotations

import argparse
import configparser
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO / "deploy" / "docker"
EXTRAS_DIR = DOCKER_DIR / "build-extras"
KEEP_IN_EXTRAS = {"README.md", ".lock"}
LOCAL_BASE = "edgefleet-base:bookworm"
SUITE = "bookworm"
TORCH_SPEC = "torch==2.13.0"
# Largest torch wheel we accept: CPU wheels are ~200 MB, CUDA ones several GB.
MAX_TORCH_WHEEL_BYTES = 600 * 1024 * 1024
IMAGES = ("coordinator", "agent", "redis", "prometheus")
MULTI_STAGE = ("coordinator", "agent")  # their "builder" stage is tagged as the layer cache
BUILD_LABEL = "org.edgefleet.build=true"  # set by every Dockerfile in deploy/docker
# In the container the extras are at this path (see the Dockerfiles).
CONTAINER_EXTRAS = "/tmp/build-extras"


class BuildError(RuntimeError):
    """A step failed in a way the user can act on; the message says how."""


@dataclass(frozen=True)
class Options:
    base_image: str
    images: tuple[str, ...]
    compress: bool
    tag: str
    no_cache: bool
    mirror: str | None


def log(msg: str) -> None:
    print(f"[docker_build] {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    log("$ " + " ".join(cmd))
    return subprocess.run(list(cmd), check=True, **kwargs)  # type: ignore[call-overload,no-any-return]


def image_exists(name: str) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", name], capture_output=True, check=False
        ).returncode
        == 0
    )


# --- the local Debian base ---------------------------------------------------------------


def host_debian_uris() -> list[str]:
    """Debian mirror URIs the host's apt uses (deb822 ``.sources`` and classic ``.list``)."""
    uris: list[str] = []
    files = [Path("/etc/apt/sources.list")]
    d = Path("/etc/apt/sources.list.d")
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".sources", ".list"))
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            line = line.strip()
            if line.startswith("URIs:"):
                uris += line.split()[1:]
            elif line.startswith("deb "):
                parts = [p for p in line.split() if not p.startswith("[")]
                if len(parts) > 1:
                    uris.append(parts[1])
    return [u.rstrip("/") for u in uris if u.startswith(("http://", "https://"))]


def pick_mirrors(override: str | None) -> tuple[str, str | None]:
    """The main Debian mirror and the security mirror (if the host uses one)."""
    uris = host_debian_uris()
    security = next((u for u in uris if "security" in u), None)
    if override:
        return override.rstrip("/"), security
    main = next((u for u in uris if "security" not in u and re.search(r"/debian$", u)), None)
    if main is None:
        raise BuildError(
            "no Debian mirror found in /etc/apt/sources.list(.d); pass --mirror URL "
            "(e.g. http://deb.debian.org/debian)"
        )
    return main, security


def make_local_base(name: str, mirror_override: str | None) -> None:
    """debootstrap a minimal bookworm and import it; python is added by the Dockerfiles."""
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is missing: run scripts/install_prereqs.sh")
    if os.geteuid() != 0:
        raise BuildError("making the local base image needs root (debootstrap)")
    mirror, security = pick_mirrors(mirror_override)
    with tempfile.TemporaryDirectory(prefix="edgefleet-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        started = time.monotonic()
        run(
            ["debootstrap", "--variant=minbase", SUITE, str(root), mirror],
            stdout=subprocess.DEVNULL,
        )
        sources = [f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main"]
        if security:
            sources.append(f"deb {security} {SUITE}-security main")
        (root / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
        # Keep later apt installs small, the way the official slim images do.
        (root / "etc/apt/apt.conf.d/90edgefleet").write_text(
            'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
        )
        (root / "etc/dpkg/dpkg.cfg.d/90edgefleet-nodoc").write_text(
            "path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\n"
            "path-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n"
            "path-include /usr/share/doc/*/copyright\n"
        )
        for junk in (
            "var/cache/apt",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
            "usr/share/locale",
        ):
            p = root / junk
            if p.is_dir():
                for child in p.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            run(
                [
                    "docker",
                    "import",
                    "--change",
                    "ENV LANG=C.UTF-8",
                    "--change",
                    'CMD ["/bin/bash"]',
                    "-",
                    name,
                ],
                stdin=tar.stdout,
                stdout=subprocess.DEVNULL,
            )
        finally:
            if tar.stdout:
                tar.stdout.close()
            tar.wait()
        log(f"made {name} from {mirror} in {time.monotonic() - started:.0f}s")


# --- what pip needs inside the build -----------------------------------------------------


def host_pip_config() -> dict[str, str]:
    """The host pip's effective settings (``pip config list``: files and PIP_* variables)."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    from_files: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, option = key.rpartition(".")
        target = from_env if scope == ":env:" else from_files
        target[option] = value.strip().strip("'\"")
    return from_files | from_env  # PIP_* variables win over files, as in pip itself


def clean_extras() -> None:
    if not EXTRAS_DIR.is_dir():
        return
    for child in EXTRAS_DIR.iterdir():
        if child.name in KEEP_IN_EXTRAS:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def download_cpu_torch(dest: Path) -> Path:
    """``pip download`` the CPU torch wheel on the host; refuse anything CUDA-sized."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        TORCH_SPEC,
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest),
    ]
    index = os.environ.get("EDGEFLEET_TORCH_INDEX_URL")  # e.g. https://download.pytorch.org/whl/cpu
    if index:
        cmd += ["--extra-index-url", index]
    run(cmd, stdout=subprocess.DEVNULL)
    wheels = sorted(dest.glob("torch-*.whl"))
    if not wheels:
        raise BuildError(f"pip download {TORCH_SPEC} produced no wheel")
    wheel = wheels[-1]
    if "+cpu" not in wheel.name or wheel.stat().st_size > MAX_TORCH_WHEEL_BYTES:
        wheel.unlink()
        raise BuildError(
            f"{wheel.name} is not a CPU wheel; set EDGEFLEET_TORCH_INDEX_URL="
            "https://download.pytorch.org/whl/cpu (or put the CPU wheel on pip's find-links)"
        )
    return wheel


def prepare_extras(compress: bool) -> None:
    """Copy the host's CA bundle, constraints and (optionally) torch; write a container pip.conf.

    Local ``file://`` indexes and find-links directories of the host do not exist in the
    container, so they are dropped; http(s) indexes are kept.
    """
    clean_extras()
    EXTRAS_DIR.mkdir(parents=True, exist_ok=True)
    cfg = host_pip_config()
    conf = configparser.ConfigParser()
    conf["global"] = {
        "disable-pip-version-check": "1",
        "timeout": cfg.get("default-timeout", "120"),
    }
    g = conf["global"]
    cert = (
        cfg.get("cert") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    )
    if Path(cert).is_file():
        shutil.copyfile(cert, EXTRAS_DIR / "ca-certificates.crt")
        g["cert"] = f"{CONTAINER_EXTRAS}/ca-certificates.crt"
    constraint = cfg.get("constraint")
    if constraint and Path(constraint).is_file():
        shutil.copyfile(constraint, EXTRAS_DIR / "constraints.txt")
        g["constraint"] = f"{CONTAINER_EXTRAS}/constraints.txt"
    if cfg.get("index-url", "").startswith(("http://", "https://")):
        g["index-url"] = cfg["index-url"]
    extra = [u for u in cfg.get("extra-index-url", "").split() if u.startswith(("http", "https"))]
    if extra:
        g["extra-index-url"] = " ".join(extra)
    if cfg.get("trusted-host"):
        g["trusted-host"] = cfg["trusted-host"]
    if compress:
        wheel = download_cpu_torch(EXTRAS_DIR / "wheels")
        g["find-links"] = f"{CONTAINER_EXTRAS}/wheels"
        log(f"torch for the coordinator image: {wheel.name}")
    with (EXTRAS_DIR / "pip.conf").open("w") as fh:
        conf.write(fh)


# --- building ----------------------------------------------------------------------------


def docker_env() -> dict[str, str]:
    """Use BuildKit only where the CLI has buildx; the legacy builder works everywhere."""
    env = dict(os.environ)
    if "DOCKER_BUILDKIT" not in env:
        has_buildx = (
            subprocess.run(
                ["docker", "buildx", "version"], capture_output=True, check=False
            ).returncode
            == 0
        )
        env["DOCKER_BUILDKIT"] = "1" if has_buildx else "0"
    return env


def build_image(component: str, opts: Options, env: dict[str, str]) -> None:
    dockerfile = DOCKER_DIR / f"{component}.Dockerfile"
    tag = f"edgefleet-{component}:{opts.tag}"
    common = [
        "docker",
        "build",
        "--network",
        "host",
        "-f",
        str(dockerfile),
        "--build-arg",
        f"BASE_IMAGE={opts.base_image}",
    ]
    if component == "coordinator":
        extras = "coordinator,compress" if opts.compress else "coordinator"
        common += ["--build-arg", f"EXTRAS={extras}"]
    first_pass = [*common, "--no-cache"] if opts.no_cache else common
    started = time.monotonic()
    if component in MULTI_STAGE:
        # Tag the builder stage too: it is the layer cache of the next build, and a tag keeps
        # it from being pruned as dangling (see prune_superseded). The final build reuses it.
        builder = f"edgefleet-{component}-builder:{opts.tag}"
        run(
            [*first_pass, "--target", "builder", "-t", builder, str(REPO)],
            env=env,
            stdout=sys.stderr,
        )
        first_pass = common
    run([*first_pass, "-t", tag, str(REPO)], env=env, stdout=sys.stderr)
    log(f"built {tag} in {time.monotonic() - started:.0f}s")


def prune_superseded() -> None:
    """Remove our images that a rebuild left untagged (each source change leaves ~0.5 GB)."""
    run(
        ["docker", "image", "prune", "-f", "--filter", f"label={BUILD_LABEL}"],
        stdout=subprocess.DEVNULL,
    )


def build(opts: Options) -> None:
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        raise BuildError("the Docker engine is not reachable (docker info failed)")
    if opts.base_image == LOCAL_BASE and not image_exists(LOCAL_BASE):
        make_local_base(LOCAL_BASE, opts.mirror)
    env = docker_env()
    EXTRAS_DIR.mkdir(parents=True, exist_ok=True)
    # Builds share build-extras/: one at a time, or one would empty it under another.
    with (EXTRAS_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            prepare_extras(opts.compress and "coordinator" in opts.images)
            for component in opts.images:
                build_image(component, opts, env)
        finally:
            clean_extras()
    prune_superseded()


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--base-image",
        default=os.environ.get("EDGEFLEET_BASE_IMAGE", LOCAL_BASE),
        help="base of the coordinator/agent images: the local debootstrap image (default, "
        "made if missing) or e.g. python:3.11-slim where a registry is reachable",
    )
    p.add_argument(
        "--images",
        default=",".join(IMAGES),
        help=f"comma-separated subset of {','.join(IMAGES)} (redis/prometheus are the "
        "offline images from Debian packages)",
    )
    p.add_argument("--compress", action="store_true", help="add the compress extra (CPU torch)")
    p.add_argument("--tag", default="latest", help="image tag (default %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="build without the layer cache")
    p.add_argument("--mirror", default=None, help="Debian mirror for the local base image")
    a = p.parse_args(argv)
    images = tuple(i.strip() for i in a.images.split(",") if i.strip())
    unknown = sorted(set(images) - set(IMAGES))
    if unknown:
        p.error(f"unknown image(s): {', '.join(unknown)}")
    return Options(a.base_image, images, a.compress, a.tag, a.no_cache, a.mirror)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    try:
        build(opts)
    except BuildError as err:
        print(f"docker_build: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(
            f"docker_build: command failed ({err.returncode}): {' '.join(err.cmd)}", file=sys.stderr
        )
        return 1
    log(
        f"done in {time.monotonic() - started:.0f}s: "
        + ", ".join(f"edgefleet-{c}:{opts.tag}" for c in opts.images)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
