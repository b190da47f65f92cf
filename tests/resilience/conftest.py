"""Fixtures for the resilience tests: agents in their own network namespaces, and faults.

- ``netns_lab``: creates network namespaces, each joined to the root namespace by a veth pair
  with addresses on a private /30 (root side ``.1``, namespace side ``.2``); the namespace's
  default route goes through its veth, so every namespace reaches every root-side address.
  Namespaces and veths are deleted by the fixture's finalizer, also when the test fails.
  Skips with the kernel's reason when namespaces cannot be made (no CAP_NET_ADMIN, no ``ip``).
- ``NetnsCoordinatorProc`` / ``NetnsAgentProc``: the shared ``CoordinatorProc`` / ``AgentProc``
  helpers of ``tests/conftest.py``, bound to a root-side veth address, and run through
  ``ip netns exec NS`` respectively (same arguments, environment and logs otherwise).
- ``Link`` faults: ``cut``/``restore`` (``ip link set ... down|up``) and ``impair``: ``tc netem
  delay/loss`` where the kernel has sch_netem; where it has not, loss is made with an nftables
  ``numgen random`` drop inside the namespace (both directions) and delay is not emulated (the
  tests say so). ``Link.mechanism`` records what was used, so the tests can print it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import AgentProc, CoordinatorProc, _env, free_port, kill_flower_group
from tests.prereqs import missing_prerequisite, require_binaries


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class Link:
    """One namespace and its veth pair to the root namespace."""

    netns: str
    root_dev: str
    ns_dev: str
    root_ip: str
    ns_ip: str
    impaired: list[str] = field(default_factory=list)
    mechanism: str = ""

    def ns(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.netns, *cmd, check=check)

    # --- cut ------------------------------------------------------------------------------

    def cut(self) -> None:
        """Pull the cable: the root side goes down, the namespace side loses its carrier.

        Packets in flight are dropped silently (no RST, no ICMP): connections hang, as on a
        real link that dies."""
        _run("ip", "link", "set", self.root_dev, "down")

    def restore(self) -> None:
        _run("ip", "link", "set", self.root_dev, "up")

    # --- delay and loss -------------------------------------------------------------------

    def impair(self, delay_ms: int = 200, loss_pct: int = 30) -> str:
        """Delay and drop traffic both ways; returns a description of what was applied."""
        netem = ("netem", "delay", f"{delay_ms}ms", "loss", f"{loss_pct}%")
        first = _run("tc", "qdisc", "add", "dev", self.root_dev, "root", *netem, check=False)
        if first.returncode == 0:
            self.ns("tc", "qdisc", "add", "dev", self.ns_dev, "root", *netem)
            self.impaired.append("netem")
            self.mechanism = f"tc netem delay {delay_ms}ms loss {loss_pct}% (both directions)"
            return self.mechanism
        # No sch_netem in this kernel: drop with nftables in the namespace, both hooks.
        table = "resilience"
        self.ns("nft", "add", "table", "inet", table)
        for hook in ("input", "output"):
            self.ns(
                "nft",
                "add",
                "chain",
                "inet",
                table,
                hook,
                f"{{ type filter hook {hook} priority 0 ; }}",
            )
            self.ns(
                "nft",
                "add",
                "rule",
                "inet",
                table,
                hook,
                "meta",
                "l4proto",
                "tcp",
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                str(loss_pct),
                "drop",
            )
        self.impaired.append("nft")
        self.mechanism = (
            f"nftables random drop {loss_pct}% of TCP in and out of the namespace; "
            f"no {delay_ms}ms delay (tc netem: {first.stderr.strip() or 'unavailable'})"
        )
        return self.mechanism

    def clear(self) -> None:
        """Remove every impairment (idempotent)."""
        if "netem" in self.impaired:
            _run("tc", "qdisc", "del", "dev", self.root_dev, "root", check=False)
            self.ns("tc", "qdisc", "del", "dev", self.ns_dev, "root", check=False)
        if "nft" in self.impaired:
            self.ns("nft", "delete", "table", "inet", "resilience", check=False)
        self.impaired.clear()


def netem_available() -> tuple[bool, str]:
    """Whether ``tc qdisc ... netem`` works here (tried on a throwaway veth pair)."""
    if shutil.which("tc") is None:
        return False, "no tc binary"
    name = f"efq{os.getpid() % 100000}"
    made = _run("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p", check=False)
    if made.returncode != 0:
        return False, f"cannot make a veth pair: {made.stderr.strip()}"
    try:
        added = _run(
            "tc", "qdisc", "add", "dev", name, "root", "netem", "delay", "1ms", check=False
        )
        return added.returncode == 0, added.stderr.strip()
    finally:
        _run("ip", "link", "del", name, check=False)


@dataclass
class NetnsLab:
    """Makes namespaces on demand; ``teardown`` removes everything it made."""

    tag: str
    subnet_base: int
    links: list[Link] = field(default_factory=list)

    def add(self) -> Link:
        i = len(self.links)
        third = self.subnet_base + i
        link = Link(
            netns=f"ef-{self.tag}-{i}",
            root_dev=f"efr{self.tag}{i}",
            ns_dev=f"efn{self.tag}{i}",
            root_ip=f"10.213.{third}.1",
            ns_ip=f"10.213.{third}.2",
        )
        self.links.append(link)  # registered before creation: teardown removes partial setups
        _run("ip", "netns", "add", link.netns)
        _run(
            "ip", "link", "add", link.root_dev, "type", "veth", "peer", "name", link.ns_dev,
            "netns", link.netns,
        )  # fmt: skip
        _run("ip", "addr", "add", f"{link.root_ip}/30", "dev", link.root_dev)
        _run("ip", "link", "set", link.root_dev, "up")
        link.ns("ip", "addr", "add", f"{link.ns_ip}/30", "dev", link.ns_dev)
        link.ns("ip", "link", "set", link.ns_dev, "up")
        link.ns("ip", "link", "set", "lo", "up")
        link.ns("ip", "route", "add", "default", "via", link.root_ip)
        return link

    def teardown(self) -> None:
        for link in self.links:
            link.clear()
            _run("ip", "link", "del", link.root_dev, check=False)  # takes its peer with it
            _run("ip", "netns", "del", link.netns, check=False)


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    if sys.platform != "linux":
        pytest.skip("network namespaces need Linux")
    require_binaries("ip", "nft")
    tag = f"{os.getpid() % 10000:04d}"
    probe = f"ef-probe-{tag}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        missing_prerequisite(f"ip netns add refused (need CAP_NET_ADMIN): {made.stderr.strip()}")
    _run("ip", "netns", "del", probe, check=False)
    # A /30 per namespace in 10.213.<base + i>.0; the pid spreads concurrent runs apart.
    lab = NetnsLab(tag=tag, subnet_base=(os.getpid() % 40) * 6)
    try:
        yield lab
    finally:
        lab.teardown()


@dataclass
class NetnsCoordinatorProc(CoordinatorProc):
    """The shared coordinator helper, listening on ``host`` (a root-side veth address)."""

    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass
class NetnsAgentProc(AgentProc):
    """The shared agent helper, run inside a network namespace with ``ip netns exec``."""

    netns: str = ""

    def start(self) -> NetnsAgentProc:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    sys.executable,
                    "-m",
                    "edgefleet.agent",
                    "--state-dir",
                    str(self.state_dir),
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                env=_env(),
            )
        return self


@pytest.fixture
def netns_processes(
    tmp_path: Path, netns_lab: NetnsLab
) -> Iterator[tuple[Callable[..., NetnsCoordinatorProc], Callable[..., NetnsAgentProc]]]:
    """Factories for a coordinator on a veth address and agents in namespaces; every process
    is stopped at the end of the test (before ``netns_lab`` removes the namespaces)."""
    coordinators: list[NetnsCoordinatorProc] = []
    agents: list[NetnsAgentProc] = []

    def coordinator(host: str, *args: str, data_dir: Path | None = None) -> NetnsCoordinatorProc:
        c = NetnsCoordinatorProc(
            data_dir or tmp_path / "coord", free_port(), ["--host", host, *args], host=host
        )
        coordinators.append(c)
        return c.start()  # type: ignore[return-value]

    def agent(link: Link, coordinator: str, name: str, *extra: str) -> NetnsAgentProc:
        a = NetnsAgentProc(
            tmp_path / "agents" / name,
            ["--coordinator", coordinator, "--name", name, "--insecure", *extra],
            netns=link.netns,
        )
        agents.append(a)
        return a.start()

    yield coordinator, agent
    for a in agents:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
        # killed -9, the agent leaves its SuperNode and training worker for adoption
        kill_flower_group(a.state_dir / "fl" / "supernode.pid")
        kill_flower_group(a.state_dir / "fl" / "train-worker.pid")
    for c in coordinators:
        if c.proc is not None and c.proc.poll() is None:
            c.stop()
        kill_flower_group(c.data_dir / "superlink" / "superlink.pid")
