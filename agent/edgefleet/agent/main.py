"""``edgefleet-agent``: the process that runs on each device.

Usage: ``edgefleet-agent --coordinator HOST:PORT --token-file F --profile NAME|auto --state-dir S``.
Exits 0 after SIGTERM/SIGINT (having told the coordinator it is going),
2 on a condition that retrying cannot fix (bad token, invalid profile).
"""

from __future__ import annotations

import signal
import sys


def _stop_during_startup(signum: int, frame: object) -> None:
    """A SIGTERM before the event loop runs (slow imports on a busy device): leave cleanly."""
    raise SystemExit(0)


# Installed before the heavier imports below: a supervisor that stops the agent while it is
# still starting must get a clean exit, not death by the default signal disposition.
signal.signal(signal.SIGTERM, _stop_during_startup)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

from edgefleet.agent.config import AgentConfig, FatalAgentError  # noqa: E402
from edgefleet.agent.identity import IdentityError, ensure_state_dir  # noqa: E402
from edgefleet.agent.session import AgentSession  # noqa: E402
from edgefleet.agent.workload import LocalDataSpec  # noqa: E402
from edgefleet.catalog import CATALOG, UnknownProfileError, get_profile  # noqa: E402
from edgefleet.hostdetect import detect_host_profile  # noqa: E402
from edgefleet.profiles import DeviceProfile  # noqa: E402
from edgefleet.tokenfile import ENROLL_TOKEN_FILE_ENV, TokenFileError, read_token_file  # noqa: E402
from edgefleet.version import __version__  # noqa: E402

COORDINATOR_ENV = "EDGEFLEET_COORDINATOR"
ENROLL_TOKEN_ENV = "EDGEFLEET_ENROLL_TOKEN"


def _parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"edgefleet-agent: --label expects KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="Run the edgefleet device agent: enrol with a coordinator and keep heartbeating.",
    )
    parser.add_argument(
        "--coordinator",
        default=os.environ.get(COORDINATOR_ENV, "127.0.0.1:50051"),
        help="coordinator HOST:PORT, several as A,B,C (all kept: Register tries each in "
        "turn), or one DNS name resolving to many replicas "
        f"(env {COORDINATOR_ENV}; default %(default)s)",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get(ENROLL_TOKEN_FILE_ENV) or None,
        help="file holding the enrollment token, needed only for the first registration "
        f"(env {ENROLL_TOKEN_FILE_ENV}; wins over {ENROLL_TOKEN_ENV})",
    )
    token.add_argument(
        "--token",
        default=os.environ.get(ENROLL_TOKEN_ENV, ""),
        help=f"enrollment token (env {ENROLL_TOKEN_ENV}); prefer --token-file or the env: "
        "a command-line argument is visible to every local user in the process list",
    )
    parser.add_argument(
        "--profile",
        default="auto",
        help=f"device profile: auto (detect this host) or one of {', '.join(CATALOG)}",
    )
    parser.add_argument(
        "--ca-cert",
        default=os.environ.get("EDGEFLEET_CA_CERT") or None,
        help="the coordinator's CA certificate, to verify it over TLS (env EDGEFLEET_CA_CERT)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=os.environ.get("EDGEFLEET_INSECURE", "") not in ("", "0"),
        help="plaintext, for a coordinator started with --insecure (env EDGEFLEET_INSECURE=1)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("~/.edgefleet-agent").expanduser(),
        help="where the agent keeps its identity (default %(default)s)",
    )
    parser.add_argument("--name", default=None, help="device name (default: host name)")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="device label (repeat)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--inference-port",
        type=int,
        default=None,
        help="serve edgefleet.v1.InferenceService on 127.0.0.1:PORT (0: any free port, "
        "written to STATE_DIR/inference.json; default: no endpoint)",
    )
    parser.add_argument(
        "--workload-rate",
        type=float,
        default=0.0,
        help="simulated devices: replay the local data at this many requests/s (needs --local-data)",
    )
    parser.add_argument(
        "--local-data",
        default=None,
        help="local dataset: a .npz shard, or 'digits' to partition the digits set here "
        "(replayed by --workload-rate, used by --finetune, and it makes the agent join federated "
        "rounds with its own SuperNode when the coordinator runs a SuperLink)",
    )
    parser.add_argument(
        "--partition",
        default="0/1",
        metavar="I/N",
        help="with --local-data digits: this device's part I of N (default %(default)s)",
    )
    parser.add_argument("--partition-seed", type=int, default=0, help="Dirichlet seed")
    parser.add_argument(
        "--data-shift",
        default="",
        metavar="noise=F,rotate=K",
        help="per-device covariate shift of the local data (gaussian noise, up to K quarter turns)",
    )
    parser.add_argument(
        "--finetune",
        default="",
        choices=["", "auto", "full", "sparse", "tinytl", "head"],
        help="fine-tune once on the local data after a variant activates (scope; auto = the "
        "largest that fits the memory budget)",
    )
    parser.add_argument(
        "--no-federation",
        dest="federation",
        action="store_false",
        help="never run a Flower SuperNode, even when the coordinator names a SuperLink "
        "(by default the agent joins federated fine-tuning with its --local-data)",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    return parser


def local_data_spec(args: argparse.Namespace) -> LocalDataSpec | None:
    """The ``--local-data``/``--partition``/``--data-shift`` flags as one spec."""
    if not args.local_data:
        return None
    index, sep, count = str(args.partition).partition("/")
    shift: dict[str, float] = {}
    for item in filter(None, str(args.data_shift).split(",")):
        key, _, value = item.partition("=")
        shift[key.strip()] = float(value)
    if not sep or not index.isdigit() or not count.isdigit() or set(shift) - {"noise", "rotate"}:
        raise SystemExit("edgefleet-agent: use --partition I/N and --data-shift noise=F,rotate=K")
    return LocalDataSpec(
        source=args.local_data,
        partition=int(index),
        partitions=int(count),
        seed=args.partition_seed,
        noise=shift.get("noise", 0.0),
        rotate=int(shift.get("rotate", 0)),
    )


def resolve_profile(name: str, state_dir: Path) -> DeviceProfile:
    if name == "auto":
        return detect_host_profile(state_dir)
    return get_profile(name)


def enroll_token(args: argparse.Namespace) -> str:
    """The token from ``--token-file`` (or its env) if given, else ``--token`` (or its env)."""
    if args.token_file is not None:
        return read_token_file(Path(args.token_file))
    return str(args.token)


async def _run(config: AgentConfig) -> None:
    session = AgentSession(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await session.run(stop)


def _ca_certificate(args: argparse.Namespace) -> bytes | None:
    """The CA to trust, or None for plaintext (only with --insecure)."""
    if args.insecure:
        logging.getLogger("edgefleet.agent").warning(
            "INSECURE: talking plaintext to the coordinator (--insecure)"
        )
        return None
    if args.ca_cert is None:
        raise FatalAgentError(
            "no CA certificate: pass --ca-cert PATH (the coordinator's DATA_DIR/tls/ca.pem, "
            "or set EDGEFLEET_CA_CERT), or --insecure for a coordinator started with --insecure"
        )
    try:
        return Path(args.ca_cert).read_bytes()
    except OSError as exc:
        raise FatalAgentError(f"cannot read the CA certificate {args.ca_cert}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_during_startup)
    args = build_parser().parse_args(argv)
    # Absolute from here on: Flower (1.42+) refuses relative paths in what we hand it.
    args.state_dir = args.state_dir.expanduser().resolve()
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger("edgefleet.agent")
    try:
        ensure_state_dir(args.state_dir)  # private before anything is written into it
        profile = resolve_profile(args.profile, args.state_dir)
        config = AgentConfig(
            coordinator=args.coordinator,
            profile=profile,
            state_dir=args.state_dir,
            name=args.name or socket.gethostname(),
            enroll_token=enroll_token(args),
            labels=_parse_labels(args.label),
            inference_port=args.inference_port,
            workload_rate=args.workload_rate,
            local_data=local_data_spec(args),
            finetune_scope=args.finetune,
            ca_cert=_ca_certificate(args),
            federation=args.federation,
        )
        asyncio.run(_run(config))
    except UnknownProfileError as err:
        print(f"edgefleet-agent: {err}", file=sys.stderr)
        return 2
    except (FatalAgentError, IdentityError, TokenFileError) as err:
        log.error("%s", err)
        return 2
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
