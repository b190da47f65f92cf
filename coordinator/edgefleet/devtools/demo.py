"""The end-to-end demo behind ``make demo``.

It runs everything for real: trains a base model on the offline digits set and
builds compressed variants (``edgefleet models``), starts a coordinator with its
embedded Redis and one agent process per simulated device, deploys the model
with a canary rollout (each device gets the variant that fits it; agents
download, verify and activate it), prints what each device runs and why, and
tears it all down. Later features extend this script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgefleet.client import render
from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.client.jsonout import dumps as strict_json
from edgefleet.client.jsonout import print_json
from edgefleet.coordinator.tokens import ADMIN_TOKEN_FILE, ENROLL_TOKEN_FILE
from edgefleet.devtools.simulate import SimulatedFleet
from edgefleet.v1 import admin_pb2

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
    data_dir: Path,
    extra_args: list[str] | None = None,
    timeout: float = 30.0,
    insecure: bool = True,
    superlink: str = "off",
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``edgefleet coordinator start --port 0`` and return it with its address.

    No SuperLink unless asked (``superlink="local"``): benchmarks measure the coordinator."""
    info = data_dir / "coordinator.json"
    info.unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "coordinator.log").open("ab")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.cli.main",
            "coordinator",
            "start",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            "--metrics-port",
            "0",
            *(["--insecure"] if insecure else []),
            "--superlink",
            superlink,
            "--superlink-port",
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


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


DEMO_MODEL = "digits"
# The per-inference budget of the application each device class serves in the
# demo (a device label read by selection): a Zero 2 W runs a camera pipeline with
# a tight frame budget, a Cortex-M4 does keyword spotting at 100 Hz (10 ms).
DEMO_BUDGETS = {"rpi-zero2w": {"latency-slo-ms": "1.5"}, "cortex-m4": {"latency-slo-ms": "10"}}
# A spread of the survey's families: quantization, pruning, distillation and a pipeline.
DEMO_RECIPES = (
    "fp16",
    "int8-static",
    "prune-channels:ratio=0.5:epochs=4+int8-static",
    "distill:width=0.5:epochs=10",
    "distill:width=0.25:epochs=10+int8-static",
)


def _cli(*args: str, capture: bool) -> subprocess.CompletedProcess[str]:
    """Run an ``edgefleet`` command as an operator would (same interpreter)."""
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli.main", *args],
        capture_output=capture,
        text=True,
    )
    if result.returncode != 0:
        detail = (result.stderr or "").strip().splitlines()[-1:] if capture else []
        raise AdminClientError(f"edgefleet {' '.join(args[:2])} failed: {' '.join(detail)}")
    return result


def build_demo_model(
    data_dir: Path, err_console: Console, as_json: bool, epochs: int, recipes: Sequence[str]
) -> list[dict[str, Any]]:
    """Train the base model on digits and build its variants; return the variants table."""
    store = ["--data-dir", str(data_dir)]
    add = ["models", "add", DEMO_MODEL, "--arch", "ds-cnn", "--width", "0.5"]
    add += ["--epochs", str(epochs), "--latency-runs", "100"]
    err_console.print(f"  edgefleet {' '.join(add[:-2])}")
    _cli(*add, *store, capture=as_json)
    build = ["models", "build", DEMO_MODEL, "--recipes", ",".join(recipes)]
    err_console.print(f"  edgefleet {' '.join(build)}")
    _cli(*build, "--latency-runs", "100", *store, capture=as_json)
    if not as_json:
        _cli("models", "variants", DEMO_MODEL, *store, capture=False)
    listed = _cli("models", "variants", DEMO_MODEL, "--json", *store, capture=True)
    variants: list[dict[str, Any]] = json.loads(listed.stdout)
    return variants


def choices_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="what each device runs, and why", title_justify="left")
    columns = ("DEVICE", "PROFILE", "SLO MS", "ACTIVE", "RECIPE", "RUNTIME", "PRED MS", "WHY")
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            r["profile"],
            r["slo_ms"] or "-",
            (r["variant"] or "-")[:12],
            r["recipe"],
            r["runtime"],
            f"{r['predicted_latency_ms']:.3g}",
            r["reason"],
        )
    return table


def device_choices(client: AdminClient) -> list[dict[str, Any]]:
    rows = []
    for d in sorted(client.list_devices(), key=lambda d: d.name):
        e = client.explain_device(d.id, DEMO_MODEL)
        chosen = next((c for c in e.candidates if c.chosen), None)
        rows.append(
            {
                "device_id": d.id,
                "name": d.name,
                "profile": d.profile.name,
                "slo_ms": d.labels.get("latency-slo-ms", ""),
                "variant": d.active_variant or None,
                "chosen": e.chosen_variant or None,
                "recipe": chosen.recipe if chosen else "-",
                "runtime": chosen.runtime if chosen else "-",
                "predicted_latency_ms": chosen.predicted_latency_ms if chosen else 0.0,
                "fits": sum(1 for c in e.candidates if c.fits),
                "candidates": len(e.candidates),
                "reason": e.reason,
            }
        )
    return rows


#: Demo devices (indexes into the fleet) that get local data and so join federated rounds with
#: their own SuperNode: a phone, a Pi 4, a Pi Zero 2 W and a Cortex-M4 (through its agent).
FEDERATED_DEVICES = (0, 2, 3, 6)


def federated_devices(devices: int) -> list[int]:
    """Which of ``devices`` demo agents take part (the preferred mix, else the first ones)."""
    chosen = [i for i in FEDERATED_DEVICES if i < devices]
    return chosen if len(chosen) >= 2 else list(range(min(devices, len(FEDERATED_DEVICES))))


def _federated(
    data_dir: Path, rounds: int, devices: int, err_console: Console, as_json: bool
) -> dict[str, Any]:
    """Federated fine-tuning on Flower with the fleet's own SuperNodes, accuracy before/after."""
    from edgefleet.devtools.fl_demo import federated_step

    info = json.loads((data_dir / "coordinator.json").read_text())
    if not info.get("superlink"):
        raise AdminClientError("the demo coordinator runs no SuperLink (is flwr installed?)")
    err_console.print(
        f"  edgefleet train start mlp --rounds {rounds} --strategy heterofl "
        f"--min-devices {devices}   (SuperLink {info['superlink']})"
    )
    ca = Path(info["ca_cert"]) if info.get("ca_cert") else None
    step = federated_step(
        data_dir / "federated", info["superlink"], ca, devices=devices, rounds=rounds
    )
    if not as_json:
        for line in step.lines():
            err_console.print(f"  {line}", highlight=False)
    return {
        "acc_before": step.acc_before,
        "acc_after": step.acc_after,
        "rounds": len(step.rounds),
        "devices": step.devices,
        "seconds": round(step.seconds, 1),
    }


def demo_problems(result: dict[str, Any], expected_devices: int) -> list[str]:
    """What the demo promised but did not deliver (empty when it did its job).

    ``make demo`` (and CI, which runs it) fails on any of these: a device without an active
    variant, a rollout that did not succeed, federated rounds that did not improve accuracy."""
    problems: list[str] = []
    if result["rollout"].get("state") != "succeeded":
        problems.append(f"rollout ended {result['rollout'].get('state')!r}")
    choices = result["choices"]
    if len(choices) != expected_devices:
        problems.append(f"{len(choices)} of {expected_devices} devices registered")
    for row in choices:
        if not row.get("variant"):
            problems.append(f"{row['name']} runs no variant")
    fed = result.get("federated")
    if fed is not None and not fed["acc_after"] > fed["acc_before"]:
        problems.append(
            f"federated rounds did not improve accuracy ({fed['acc_before']:.1%} -> "
            f"{fed['acc_after']:.1%})"
        )
    return problems


def run_demo(
    *,
    devices: int,
    data_dir: Path,
    console: Console,
    err_console: Console,
    as_json: bool,
    epochs: int = 15,
    recipes: Sequence[str] = DEMO_RECIPES,
    federated_rounds: int = 2,
    strict: bool = True,
) -> None:
    from edgefleet.client.admin_client import wait_until_online
    from edgefleet.client.render import rollout_to_dict

    if data_dir.exists():
        shutil.rmtree(data_dir)
    err_console.print("[bold]1/5[/bold] training a base model on digits and building variants")
    variants = build_demo_model(data_dir, err_console, as_json, epochs, recipes)
    err_console.print(f"[bold]2/5[/bold] starting a coordinator (state in {data_dir})")
    coordinator, address = start_coordinator_process(
        data_dir,
        ["--heartbeat-interval", "1", "--rollout-interval", "0.5"],
        insecure=False,
        superlink="local" if federated_rounds > 0 else "off",
    )
    fl_devices = federated_devices(devices) if federated_rounds > 0 else []
    fleet: SimulatedFleet | None = None
    try:
        admin = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        enroll = (data_dir / ENROLL_TOKEN_FILE).read_text().strip()
        ca_path = (data_dir / "tls" / "ca.pem").resolve()  # the demo runs TLS end to end
        ca = ca_path.read_bytes()
        err_console.print(
            f"[bold]3/5[/bold] starting {devices} simulated devices against {address}"
        )
        fleet = SimulatedFleet.start(
            coordinator=address,
            enroll_token=enroll,
            profiles=DEMO_PROFILES,
            count=devices,
            state_root=data_dir / "agents",
            labels_by_profile=DEMO_BUDGETS,
            extra_args=["--ca-cert", str(ca_path)],
            # these start their own SuperNode as soon as a heartbeat names the SuperLink, so
            # they are ready by the time the rollout is done
            extra_args_by_index={
                index: ["--local-data", "digits", "--partition", f"{k}/{len(fl_devices)}"]
                for k, index in enumerate(fl_devices)
            },
        )
        with AdminClient(address, admin, ca_cert=ca) as client:
            wait_until_online(client, {a.name for a in fleet.agents}, timeout=60)
            err_console.print(
                "[bold]4/5[/bold] edgefleet deploy digits --to all --strategy canary --soak 2"
            )
            rollout = client.create_rollout(
                admin_pb2.CreateRolloutRequest(
                    model=DEMO_MODEL,
                    selector="all",
                    strategy="canary",
                    canary_fraction=0.25,
                    # most demo devices have no local data, so no traffic to judge a canary
                    # by: the demo shows selection and distribution (`edgefleet simulate`
                    # fleets serve a workload, and there the default minimum applies)
                    gate=admin_pb2.RolloutGate(
                        soak_seconds=2, wave_timeout_seconds=120, min_inferences=0
                    ),
                )
            )
            deadline = time.monotonic() + 180
            while rollout.state not in ("succeeded", "rolled_back"):
                if time.monotonic() > deadline:
                    raise AdminClientError(f"rollout {rollout.id} still {rollout.state}")
                time.sleep(0.5)
                rollout = client.get_rollout(rollout.id)
            err_console.print(f"  rollout {rollout.id}: {rollout.state} ({rollout.message})")
            listed = client.list_devices()
            summary = client.fleet_summary()
            choices = device_choices(client)
        federated: dict[str, Any] | None = None
        if federated_rounds > 0:
            federated = _federated(
                data_dir, federated_rounds, len(fl_devices), err_console, as_json
            )
        err_console.print("[bold]5/5[/bold] the fleet as the coordinator sees it")
        result = {
            "variants": variants,
            "rollout": rollout_to_dict(rollout),
            "devices": [render.device_to_dict(d) for d in listed],
            "choices": choices,
            "summary": render.summary_to_dict(summary),
            "federated": federated,
        }
        (data_dir / "summary.json").write_text(strict_json(result) + "\n")  # NaN -> null
        if as_json:
            print_json(result)
        else:
            console.print(render.devices_table(listed))
            console.print(render.summary_table(summary))
            console.print(choices_table(choices))
        problems = demo_problems(result, expected_devices=devices) if strict else []
        if problems:
            raise AdminClientError("the demo did not do its job: " + "; ".join(problems))
    finally:
        if fleet is not None:
            report = fleet.stop()
            err_console.print(f"stopped {len(fleet.agents)} agents ({report.clean} clean)")
        code = stop_process(coordinator)
        err_console.print(f"stopped the coordinator (exit {code})")
