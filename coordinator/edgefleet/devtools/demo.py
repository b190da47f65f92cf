"""The end-to-end demo behind ``make demo``.

It runs everything for real: trains a base model on a task (``--task kws``, the default:
keyword spotting on the built-in espeak-ng set with the MFCC frontend in the model; or
``digits``) and builds compressed variants (``edgefleet models``), starts a coordinator with its
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
from edgefleet.devtools.demo_tasks import TASKS, DemoTask, OwnModelFederation, kws_fl_inputs
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


#: the default demo task (``edgefleet demo --task``): see ``edgefleet.devtools.demo_tasks``
DEFAULT_TASK = "kws"
#: the default task's recipes (kept as a name for callers that list them)
DEMO_RECIPES = TASKS[DEFAULT_TASK].recipes


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
    data_dir: Path,
    err_console: Console,
    as_json: bool,
    epochs: int,
    recipes: Sequence[str],
    task: DemoTask = TASKS[DEFAULT_TASK],
) -> list[dict[str, Any]]:
    """Train the task's base model and build its variants; return the variants table."""
    store = ["--data-dir", str(data_dir)]
    add = ["models", "add", task.model, "--dataset", task.dataset, *task.add_args]
    add += ["--epochs", str(epochs), "--latency-runs", "100"]
    err_console.print(f"  edgefleet {' '.join(add[:-2])}")
    _cli(*add, *store, capture=as_json)
    build = ["models", "build", task.model, "--recipes", ",".join(recipes)]
    err_console.print(f"  edgefleet {' '.join(build)}")
    _cli(*build, "--latency-runs", "100", *store, capture=as_json)
    if not as_json:
        _cli("models", "variants", task.model, *store, capture=False)
    listed = _cli("models", "variants", task.model, "--json", *store, capture=True)
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
            _why(r),
        )
    return table


def _why(row: dict[str, Any]) -> str:
    """Explain's reason, saying so when selection now prefers another variant than the one
    running (measured latency refined the prediction after the rollout)."""
    if row["chosen"] and row["variant"] and row["chosen"] != row["variant"]:
        return f"now prefers {row['chosen'][:12]} (next deploy): {row['reason']}"
    return str(row["reason"])


def device_choices(client: AdminClient, model: str) -> list[dict[str, Any]]:
    rows = []
    for d in sorted(client.list_devices(), key=lambda d: d.name):
        e = client.explain_device(d.id, model)
        chosen = next((c for c in e.candidates if c.chosen), None)
        rows.append(
            {
                "device_id": d.id,
                "name": d.name,
                "profile": d.profile.name,
                "slo_ms": d.labels.get("latency-slo-ms", ""),
                "variant": d.active_variant or None,
                # what the rollout assigned this device (selection at rollout time) ...
                "desired": d.desired.variant_id or None,
                # ... and what selection picks now: after the device's measured latency refines
                # the prediction it may prefer another variant, which the next deploy moves to
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
#: their own SuperNode: a phone, a Pi 4, a Pi Zero 2 W and a Cortex-M4 (through its agent,
#: training a HeteroFL width slice of the MLP within its SRAM budget).
FEDERATED_DEVICES = (0, 2, 3, 6)
#: With the deployed KWS model itself (FedAvg, full width): two phones, a Pi 4, a Zero 2 W.
FEDERATED_DEVICES_OWN_MODEL = (0, 1, 2, 3)


def federated_devices(devices: int, preferred: Sequence[int] = FEDERATED_DEVICES) -> list[int]:
    """Which of ``devices`` demo agents take part (the preferred mix, else the first ones)."""
    chosen = [i for i in preferred if i < devices]
    return chosen if len(chosen) >= 2 else list(range(min(devices, len(preferred))))


def _federated(
    data_dir: Path,
    rounds: int,
    devices: int,
    err_console: Console,
    as_json: bool,
    own_model: OwnModelFederation | None = None,
) -> dict[str, Any]:
    """Federated fine-tuning on Flower with the fleet's own SuperNodes, accuracy before/after."""
    from edgefleet.devtools.fl_demo import federated_step

    info = json.loads((data_dir / "coordinator.json").read_text())
    if not info.get("superlink"):
        raise AdminClientError("the demo coordinator runs no SuperLink (is flwr installed?)")
    what = "mlp --strategy heterofl" if own_model is None else f"{own_model.arch} --strategy fedavg"
    err_console.print(
        f"  edgefleet train start {what} --rounds {rounds} "
        f"--min-devices {devices}   (SuperLink {info['superlink']})"
    )
    ca = Path(info["ca_cert"]) if info.get("ca_cert") else None
    step = federated_step(
        data_dir / "federated",
        info["superlink"],
        ca,
        devices=devices,
        rounds=rounds,
        own_model=(own_model.arch, own_model.arch_config, own_model.init) if own_model else None,
        frontend=own_model.frontend if own_model else "",
    )
    if not as_json:
        for line in step.lines():
            err_console.print(f"  {line}", highlight=False)
    return {
        "acc_before": step.acc_before,
        "acc_after": step.acc_after,
        "rounds": len(step.rounds),
        "devices": step.devices,
        "per_device": {d: {"before": b, "after": a} for d, (b, a) in step.per_device.items()},
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
    recipes: Sequence[str] | None = None,
    federated_rounds: int = 2,
    strict: bool = True,
    task_name: str = DEFAULT_TASK,
) -> None:
    from edgefleet.client.admin_client import wait_until_online
    from edgefleet.client.render import rollout_to_dict

    task = TASKS[task_name]
    if data_dir.exists():
        shutil.rmtree(data_dir)
    err_console.print(
        f"[bold]1/5[/bold] training a base model on {task.dataset} and building variants"
    )
    variants = build_demo_model(
        data_dir, err_console, as_json, epochs, recipes or task.recipes, task
    )
    own_model: OwnModelFederation | None = None
    preferred = FEDERATED_DEVICES
    if federated_rounds > 0 and task.federated == "own-model":
        preferred = FEDERATED_DEVICES_OWN_MODEL
        n_fl = len(federated_devices(devices, preferred))
        own_model = kws_fl_inputs(data_dir, task.model, n_fl, data_dir / "federated")
    err_console.print(f"[bold]2/5[/bold] starting a coordinator (state in {data_dir})")
    coordinator, address = start_coordinator_process(
        data_dir,
        ["--heartbeat-interval", "1", "--rollout-interval", "0.5"],
        insecure=False,
        superlink="local" if federated_rounds > 0 else "off",
    )
    fl_devices = federated_devices(devices, preferred) if federated_rounds > 0 else []
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
            labels_by_profile=task.budgets,
            extra_args=["--ca-cert", str(ca_path)],
            # these start their own SuperNode as soon as a heartbeat names the SuperLink, so
            # they are ready by the time the rollout is done
            extra_args_by_index={
                index: (
                    ["--local-data", str(own_model.shards[k].resolve())]
                    if own_model is not None
                    else ["--local-data", "digits", "--partition", f"{k}/{len(fl_devices)}"]
                )
                for k, index in enumerate(fl_devices)
            },
        )
        voices = (
            {fleet.agents[i].name: own_model.groups[k] for k, i in enumerate(fl_devices)}
            if own_model is not None
            else {}
        )
        with AdminClient(address, admin, ca_cert=ca) as client:
            wait_until_online(client, {a.name for a in fleet.agents}, timeout=60)
            err_console.print(
                f"[bold]4/5[/bold] edgefleet deploy {task.model} --to all --strategy canary "
                "--soak 2"
            )
            rollout = client.create_rollout(
                admin_pb2.CreateRolloutRequest(
                    model=task.model,
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
            choices = device_choices(client, task.model)
        federated: dict[str, Any] | None = None
        if federated_rounds > 0:
            federated = _federated(
                data_dir, federated_rounds, len(fl_devices), err_console, as_json, own_model
            )
            federated["voices"] = voices  # agent name -> the voice its local data holds
            # step 5 shows the fleet after the federated step, not as listed before it (the
            # table read "87s ago" for every device: the length of the step)
            with AdminClient(address, admin, ca_cert=ca) as client:
                listed = client.list_devices()
                summary = client.fleet_summary()
        err_console.print("[bold]5/5[/bold] the fleet as the coordinator sees it")
        result = {
            "task": task_name,
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
