"""Selection, staged rollouts and automatic rollback against a real coordinator."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest

from edgefleet.catalog import get_profile
from edgefleet.client.admin_client import AdminClient, AdminClientError
from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.latency import DeviceLatencyModel
from edgefleet.coordinator.rollouts.document import RolloutRequest
from edgefleet.coordinator.rollouts.planning import assign_waves, validate_selector, wave_fractions
from edgefleet.coordinator.variant_selection import Policy, VariantFacts, select
from edgefleet.v1 import admin_pb2
from tests.conftest import ADMIN_TOKEN, CoordinatorProc, wait_for
from tests.fleetkit import MIB, ScriptedDevice, make_model, make_vision_model

FAST = ("--offline-after", "30", "--heartbeat-interval", "0.5", "--rollout-interval", "0.2")


# --- selection (pure) ------------------------------------------------------------------


def facts(
    vid: str,
    precision: str,
    acc: float,
    wbytes: int,
    lat: float,
    flash: int | None = None,
    peak: int = 8192,
    macs: int = 500_000,
) -> VariantFacts:
    runtimes = ("onnxruntime", "torch") if precision == "fp32" else ("onnxruntime",)
    if flash is not None:
        runtimes = (*runtimes, "mcu-sim")
    return VariantFacts(
        id=vid,
        model="m",
        recipe=vid,
        precision=precision,
        bundle_bytes=wbytes + 2000,
        weight_bytes=wbytes,
        peak_memory_bytes=peak,
        accuracy=acc,
        macs=macs,
        runtimes=tuple(sorted(runtimes)),
        host_latency_ms={"onnxruntime": lat, "torch": lat * 10},
        mcu_flash_bytes=flash,
    )


VARIANTS = [
    facts("big", "fp32", 0.985, 6_000_000, 0.20),
    facts("base", "fp32", 0.980, 600_000, 0.05),
    facts("int8", "int8", 0.978, 150_000, 0.03, flash=160_000, peak=6144),
]


def model(profile: str) -> DeviceLatencyModel:
    p = get_profile(profile)
    return DeviceLatencyModel(p, 5e9, 45e9)


def test_mcu_gets_the_int8_variant_and_the_reasons_for_the_rest() -> None:
    s = select(get_profile("cortex-m4"), VARIANTS, model("cortex-m4"))
    assert s.winner is not None and s.winner.variant.id == "int8"
    assert s.winner.runtime == "mcu-sim"
    failed = {v.variant.id: v.failures for v in s.verdicts if not v.fits}
    assert any(f.startswith("precision: fp32 not supported") for f in failed["big"])
    assert any(f.startswith("flash: needs") and "short by" in f for f in failed["big"])


def test_tolerance_trades_accuracy_for_latency_only_within_the_band() -> None:
    phone = get_profile("phone-flagship")
    strict = select(phone, VARIANTS, model("phone-flagship"), Policy(accuracy_tolerance=0.001))
    assert strict.winner is not None and strict.winner.variant.id == "big"  # most accurate
    loose = select(phone, VARIANTS, model("phone-flagship"), Policy(accuracy_tolerance=0.01))
    assert loose.winner is not None and loose.winner.variant.id == "int8"  # fastest in band
    assert "within 1.0 pt" in loose.reason


def test_latency_slo_rules_out_slow_variants() -> None:
    s = select(get_profile("rpi4"), VARIANTS, model("rpi4"), Policy(latency_slo_ms=1.0))
    slow = next(v for v in s.verdicts if v.variant.id == "big")
    assert not slow.fits and slow.failures[0].startswith("latency: predicted")


def test_nothing_fits_names_the_budget_and_the_shortfall() -> None:
    tiny = get_profile("cortex-m4").model_copy(update={"ram_bytes": 8 * 1024})
    s = select(tiny, VARIANTS, model("cortex-m4"))
    assert s.winner is None
    assert "no variant fits" in s.reason and "sram: needs" in s.reason and "short by" in s.reason


def test_latency_model_learns_from_observed_latency() -> None:
    m = model("rpi4")
    v = VARIANTS[1]
    predicted = m.predict_ms(v, "onnxruntime")
    assert predicted == pytest.approx(0.05 * 45e9 / 5e9)
    refined = m.refined(v, "onnxruntime", observed_ms=predicted * 2)
    assert refined.predict_ms(v, "onnxruntime") == pytest.approx(predicted * 2)
    mcu = DeviceLatencyModel(get_profile("cortex-m4"), 0, 45e9)
    assert mcu.predict_ms(VARIANTS[2], "mcu-sim") > 1.0  # cycle model: 500k MACs at 120 MHz


# --- waves and selectors -----------------------------------------------------------------


def test_waves_cover_every_device_once_and_grow() -> None:
    assert assign_waves(20, (0.05, 0.25, 1.0)) == [0] + [1] * 4 + [2] * 15
    assert assign_waves(2, (0.05, 0.25, 1.0)) == [0, 1]  # small fleets still get a canary
    assert assign_waves(3, (1.0,)) == [0, 0, 0]
    assert wave_fractions(RolloutRequest("m", "all", "canary", canary_fraction=0.2)) == (0.2, 1.0)
    with pytest.raises(InvalidArgument):
        wave_fractions(RolloutRequest("m", "all", "waves", waves=(0.5, 0.25)))
    with pytest.raises(InvalidArgument):
        wave_fractions(RolloutRequest("m", "all", "blue-green"))


@pytest.mark.parametrize("bad", ["", "label:site", "device:xyz", "zone:eu"])
def test_bad_selectors_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_selector(bad)


# --- against a real coordinator ------------------------------------------------------------


@pytest.fixture
def fleet(coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "coord"
    ids = make_model(data)
    coord = coordinator_factory(*FAST, data_dir=data)
    devices = [ScriptedDevice.register(coord.address, f"pi-{i}", "rpi4") for i in range(4)]
    devices.append(ScriptedDevice.register(coord.address, "mcu-0", "cortex-m4"))
    return coord, ids, devices


def drive(devices: Iterable[ScriptedDevice], obey: bool = True) -> None:
    for d in devices:
        d.heartbeat()
        if obey:
            d.obey()


def run_until(
    client: AdminClient,
    rollout_id: str,
    devices: list[ScriptedDevice],
    states: tuple[str, ...],
    timeout: float = 20,
    obey: bool = True,
) -> admin_pb2.Rollout:
    deadline = time.monotonic() + timeout
    while True:
        drive(devices, obey)
        rollout = client.get_rollout(rollout_id)
        if rollout.state in states:
            return rollout
        assert time.monotonic() < deadline, f"rollout stuck: {rollout.state} {rollout.message}"
        time.sleep(0.1)


def gate(soak: float = 0.3, **kw: float) -> admin_pb2.RolloutGate:
    """Scripted devices serve no traffic unless a test makes them report some: no minimum
    of inferences unless ``min_inferences`` is given."""
    return admin_pb2.RolloutGate(
        soak_seconds=soak,
        wave_timeout_seconds=kw.pop("timeout", 30),
        min_inferences=int(kw.pop("min_inferences", 0)),
        **kw,
    )  # type: ignore[arg-type]


def test_canary_rollout_advances_wave_by_wave_and_succeeds(fleet) -> None:  # type: ignore[no-untyped-def]
    coord, _ids, devices = fleet
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        rollout = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits", selector="all", strategy="canary", canary_fraction=0.2, gate=gate()
            )
        )
        assert rollout.state == "running" and list(rollout.waves) == [0.2, 1.0]
        in_canary = {d.device_id for d in rollout.devices if d.wave == 0}
        assert len(in_canary) == 1
        drive(devices, obey=False)
        desired = {d.device_id: d.desired.variant_id for d in devices}
        # only the canary has been told anything
        assert {k for k, v in desired.items() if v} == in_canary
        done = run_until(c, rollout.id, devices, ("succeeded",))
        assert {d.status for d in done.devices} == {"active"}
        chosen = {d.name: d.recipe for d in done.devices}
        assert chosen["mcu-0"] == "int8-static"  # the MCU got the int8 variant
        assert chosen["pi-0"] in ("fp32", "int8-static", "wide")
        assert all(d.active == d.desired.variant_id for d in devices)


def test_failed_activation_rolls_the_wave_back(fleet) -> None:  # type: ignore[no-untyped-def]
    coord, _ids, devices = fleet
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        first = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits", selector="profile:rpi4", strategy="all", gate=gate()
            )
        )
        run_until(c, first.id, devices, ("succeeded",))
        before = {d.device_id: d.active for d in devices}
        make_model(coord.data_dir, name="digits-v2", tag="-v2")
        second = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits-v2",
                selector="profile:rpi4",
                strategy="waves",
                waves=[0.25, 1.0],
                gate=gate(),
            )
        )
        wave0 = [
            d
            for d in devices
            if d.device_id in {x.device_id for x in second.devices if x.wave == 0}
        ]
        # the canary device rejects the bundle (e.g. bad signature)
        for d in wave0:
            d.heartbeat()
            d.failed, d.failure_reason = d.desired.variant_id, "signature check failed"
        done = run_until(c, second.id, devices, ("rolled_back",), obey=False)
        assert "activation failed: signature check failed" in done.message
        drive(devices, obey=False)
        # every device is told to run what it ran before; later waves were never touched
        for d in devices:
            if before.get(d.device_id):
                assert d.desired.variant_id == before[d.device_id]
        assert all(x.status in ("rolled_back", "waiting") for x in done.devices)


def test_latency_regression_rolls_back(fleet) -> None:  # type: ignore[no-untyped-def]
    coord, _ids, devices = fleet
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        r = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits", selector="device:" + devices[0].device_id, gate=gate(soak=5)
            )
        )
        run_until(c, r.id, devices[:1], ("running",))
        drive(devices[:1])
        devices[0].report_metric("inference_latency_ms", 1e6, seq=1)
        done = run_until(c, r.id, devices[:1], ("rolled_back",))
        assert "latency" in done.message and "predicted" in done.message


def test_pause_resume_and_restart_mid_rollout(fleet) -> None:  # type: ignore[no-untyped-def]
    coord, _ids, devices = fleet
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        r = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits", selector="all", strategy="waves", waves=[0.2, 1.0], gate=gate()
            )
        )
        assert c.control_rollout(r.id, "pause").state == "paused"
        with pytest.raises(AdminClientError, match="not running"):
            c.control_rollout(r.id, "pause")
        for _ in range(5):
            drive(devices)
            time.sleep(0.1)
        assert c.get_rollout(r.id).current_wave == 0  # paused: no advance
    coord.stop(signal.SIGKILL)
    coord.start()  # state is in Redis: the rollout resumes where it was
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        assert c.get_rollout(r.id).state == "paused"
        assert c.control_rollout(r.id, "resume").state == "running"
        assert run_until(c, r.id, devices, ("succeeded",)).state == "succeeded"


def test_rollout_bad_inputs(fleet) -> None:  # type: ignore[no-untyped-def]
    coord, _ids, _devices = fleet
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        cases = [
            (
                admin_pb2.CreateRolloutRequest(model="nope", selector="all"),
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                admin_pb2.CreateRolloutRequest(model="digits", selector="profile:rpi9"),
                grpc.StatusCode.FAILED_PRECONDITION,
            ),
            (
                admin_pb2.CreateRolloutRequest(model="digits", selector="zone:x"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                admin_pb2.CreateRolloutRequest(model="digits", selector="all", strategy="yolo"),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
        for request, code in cases:
            with pytest.raises(AdminClientError) as info:
                c.create_rollout(request)
            assert info.value.code == code, request
        with pytest.raises(AdminClientError) as info:
            c.get_rollout("ro-missing")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        r = c.create_rollout(admin_pb2.CreateRolloutRequest(model="digits", selector="all"))
        with pytest.raises(AdminClientError) as info:  # the same devices are busy
            c.create_rollout(admin_pb2.CreateRolloutRequest(model="digits", selector="all"))
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert c.control_rollout(r.id, "rollback").state == "rolled_back"


def test_a_device_that_fits_nothing_is_skipped_with_the_reason(
    coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> None:
    data = tmp_path / "coord"
    make_model(data)
    coord = coordinator_factory(*FAST, data_dir=data)
    tiny = get_profile("cortex-m4").model_copy(update={"ram_bytes": 4096})
    small = ScriptedDevice.register(coord.address, "tiny", tiny)
    pi = ScriptedDevice.register(coord.address, "pi", "rpi4")
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        r = c.create_rollout(admin_pb2.CreateRolloutRequest(model="digits", selector="all"))
        assert [s.name for s in r.skipped] == ["tiny"] and "sram: needs" in r.skipped[0].reason
        assert [d.name for d in r.devices] == ["pi"]
        with pytest.raises(AdminClientError) as info:
            c.create_rollout(
                admin_pb2.CreateRolloutRequest(model="digits", selector=f"device:{small.device_id}")
            )
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "short by" in str(info.value)
    del pi


def test_cli_deploy_explain_and_status(fleet) -> None:  # type: ignore[no-untyped-def]
    coord, ids, devices = fleet
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(
        EDGEFLEET_COORDINATOR=coord.address,
        EDGEFLEET_ADMIN_TOKEN=ADMIN_TOKEN,
        EDGEFLEET_INSECURE="1",
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgefleet.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    mcu = devices[-1]
    explained = cli("devices", "explain", mcu.device_id, "--model", "digits", "--json")
    assert explained.returncode == 0, explained.stderr
    e = json.loads(explained.stdout)
    assert e["chosen"] == ids["int8-static"]
    wide = next(c for c in e["candidates"] if c["variant"] == ids["wide"])
    assert not wide["fits"] and "short by" in wide["reason"]
    assert not wide["fits"] and any("short by" in f for f in wide["failures"])
    deployed = cli(
        "deploy", "digits", "--to", "profile:cortex-m4", "--soak", "0.2", "--min-inferences", "0",
        "--json",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    rid = json.loads(deployed.stdout)["id"]
    wait_for(
        lambda: (
            (drive([mcu]) or True)
            and json.loads(cli("rollout", "status", rid, "--json").stdout)["state"] == "succeeded"
        ),
        30,
        "success",
    )
    listed = json.loads(cli("rollout", "ls", "--json").stdout)
    assert listed[0]["id"] == rid and listed[0]["counts"] == {"active": 1}
    unknown = cli("deploy", "nope")
    assert unknown.returncode == 1 and "unknown model" in unknown.stderr


def test_a_mixed_fleet_gets_different_variants_and_a_shrunk_budget_moves_the_choice(
    coordinator_factory: Callable[..., CoordinatorProc], tmp_path: Path
) -> None:
    data = tmp_path / "coord"
    ids = make_vision_model(data)
    coord = coordinator_factory(*FAST, data_dir=data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(
        EDGEFLEET_COORDINATOR=coord.address,
        EDGEFLEET_ADMIN_TOKEN=ADMIN_TOKEN,
        EDGEFLEET_INSECURE="1",
    )

    def explain(device: ScriptedDevice) -> dict:  # type: ignore[type-arg]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgefleet.cli.main",
                "devices",
                "explain",
                device.device_id,
                "--model",
                "vision",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    fleet = {
        name: ScriptedDevice.register(coord.address, name, name)
        for name in ("phone-flagship", "rpi4", "rpi-zero2w", "cortex-m7")
    }
    chosen = {name: explain(d)["chosen"] for name, d in fleet.items()}
    by_id = {v: k for k, v in ids.items()}
    assert {n: by_id[c] for n, c in chosen.items()} == {
        "phone-flagship": "l",  # fp16 is within 0.5 pt and faster on its core
        "rpi4": "xl",  # no fp16 here; xl fits 4 GiB
        "rpi-zero2w": "m",  # 512 MiB: xl and l do not fit
        "cortex-m7": "s",  # int8 only, and only s has an MCU image that fits
    }
    assert len(set(chosen.values())) >= 3
    zero = explain(fleet["rpi-zero2w"])
    xl = next(c for c in zero["candidates"] if c["variant"] == ids["xl"])
    assert not xl["fits"] and "ram: needs" in xl["reason"] and "short by" in xl["reason"]
    m7 = explain(fleet["cortex-m7"])
    s_row = next(c for c in m7["candidates"] if c["variant"] == ids["s"])
    assert s_row["fits"] and s_row["runtime"] == "mcu-sim"
    m7_profile = get_profile("cortex-m7")
    assert m7_profile.storage_bytes >= 300 * 1024  # its flash image fits flash
    assert m7_profile.ram_bytes >= 280 * 1024 + 200 * 1024 + 16 * 1024  # and its arena SRAM

    # shrink one budget: a Pi 4 with 512 MiB of RAM can no longer hold xl
    small_pi = get_profile("rpi4").model_copy(update={"ram_bytes": 512 * MIB})
    shrunk = ScriptedDevice.register(coord.address, "rpi4-512m", small_pi)
    moved = explain(shrunk)
    assert moved["chosen"] == ids["m"]
    xl = next(c for c in moved["candidates"] if c["variant"] == ids["xl"])
    assert xl["reason"].startswith("ram: needs") and "has 512.0 MiB" in xl["reason"]
    # and a device latency budget does the same through its label
    slow = ScriptedDevice.register(coord.address, "rpi4-slo", "rpi4")
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        before = c.explain_device(slow.device_id, "vision").chosen_variant
        tight = c.explain_device(slow.device_id, "vision", slo_ms=100.0)
    assert before == ids["xl"] and tight.chosen_variant != ids["xl"]
    assert any(
        f.startswith("latency: predicted")
        for c in tight.candidates
        if c.variant_id == ids["xl"]
        for f in c.failures
    )


# --- issue 14: one active rollout per device; gates that need evidence ----------------------


def test_concurrent_creates_for_one_device_exactly_one_wins(fleet) -> None:  # type: ignore[no-untyped-def]
    """The check "device already in an active rollout" and the claim are one atomic step:
    of N CreateRollout calls racing for a device, one succeeds and the rest are refused."""
    from concurrent.futures import ThreadPoolExecutor

    coord, _ids, devices = fleet
    n = 12

    def create(device_id: str) -> str:
        with AdminClient(coord.address, ADMIN_TOKEN) as c:
            try:
                return c.create_rollout(
                    admin_pb2.CreateRolloutRequest(
                        model="digits", selector=f"device:{device_id}", gate=gate()
                    )
                ).id
            except AdminClientError as exc:
                assert exc.code == grpc.StatusCode.FAILED_PRECONDITION, str(exc)
                assert "active rollout" in str(exc), str(exc)
                return ""

    with ThreadPoolExecutor(n) as pool:
        for device in devices[:3]:  # three rounds, one device each
            created = [r for r in pool.map(create, [device.device_id] * n) if r]
            assert len(created) == 1, f"{len(created)} of {n} concurrent creates succeeded"
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        active = [r for r in c.list_rollouts() if r.state == "running"]
        assert len(active) == 3
        # rolled back, the device is free for the next rollout (its claim was released)
        c.control_rollout(active[0].id, "rollback")
        device_id = active[0].devices[0].device_id
        again = c.create_rollout(
            admin_pb2.CreateRolloutRequest(model="digits", selector=f"device:{device_id}")
        )
        assert again.state == "running"


def test_a_canary_without_traffic_holds_and_times_out_rolled_back(fleet) -> None:  # type: ignore[no-untyped-def]
    """Devices that activate but serve nothing report no error rate, latency or accuracy:
    the gate must not pass on that. The wave holds, says why, and its timeout rolls it back."""
    coord, _ids, devices = fleet
    pis = devices[:4]
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        r = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits",
                selector="profile:rpi4",
                strategy="canary",
                canary_fraction=0.25,
                gate=gate(soak=0.2, min_inferences=5, timeout=3),
            )
        )
        assert r.gate.min_inferences == 5
        canary = [d for d in pis if d.device_id == r.devices[0].device_id]
        held = run_until(c, r.id, pis, ("running",))
        deadline = time.monotonic() + 2
        while "no traffic" not in held.message and time.monotonic() < deadline:
            drive(pis)
            held = c.get_rollout(r.id)
        assert held.current_wave == 0
        assert "no traffic: cannot judge" in held.message and "0 of 5" in held.message
        canary[0].report_served(4)  # too little is still too little
        done = run_until(c, r.id, pis, ("rolled_back", "succeeded"))
        assert done.state == "rolled_back", done.message
        assert "timed out" in done.message and "no traffic: cannot judge" in done.message
        assert done.current_wave == 0  # the rest of the fleet never got the variant


def test_a_canary_with_enough_traffic_passes(fleet) -> None:  # type: ignore[no-untyped-def]
    coord, _ids, devices = fleet
    pis = devices[:4]
    with AdminClient(coord.address, ADMIN_TOKEN) as c:
        r = c.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits",
                selector="profile:rpi4",
                strategy="canary",
                canary_fraction=0.25,
                gate=gate(soak=0.2, min_inferences=5, timeout=20),
            )
        )
        deadline = time.monotonic() + 20
        while (state := c.get_rollout(r.id)).state == "running":
            assert time.monotonic() < deadline, state.message
            drive(pis)
            for d in pis:
                if d.active:
                    d.report_served(5)
            time.sleep(0.1)
        assert state.state == "succeeded", state.message


def test_unset_min_inferences_takes_the_default_and_zero_is_kept() -> None:
    from edgefleet.coordinator.api.admin_service import gate_from_proto
    from edgefleet.coordinator.rollouts.document import DEFAULT_MIN_INFERENCES, Rollout

    assert gate_from_proto(admin_pb2.RolloutGate()).min_inferences == DEFAULT_MIN_INFERENCES > 0
    assert gate_from_proto(admin_pb2.RolloutGate(min_inferences=0)).min_inferences == 0
    with pytest.raises(InvalidArgument):
        gate_from_proto(admin_pb2.RolloutGate(min_inferences=-1))
    # a rollout stored before the field existed keeps its old gate (no minimum)
    doc = {
        "id": "ro-old", "model": "m", "selector": "all", "strategy": "all", "waves": [1.0],
        "gate": {"soak_seconds": 1.0, "max_failed_devices": 0, "max_error_rate": 0.05,
                 "max_latency_ratio": 3.0, "min_accuracy": 0.0, "wave_timeout_seconds": 60.0},
        "devices": [], "skipped": [], "state": "running", "current_wave": 0,
        "wave_started_at": 0.0, "wave_healthy_since": 0.0, "created_at": 0.0,
        "updated_at": 0.0, "message": "", "version": 0,
    }  # fmt: skip
    assert Rollout.from_json(json.dumps(doc)).gate.min_inferences == 0


def test_rolling_back_a_device_that_had_no_variant_leaves_it_serving_nothing(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The rollback restores "no variant": desired state empty, and the real agent unloads
    (its endpoint answers FAILED_PRECONDITION, it reports no active variant), also after a
    restart."""
    from edgefleet.v1 import inference_pb2, inference_pb2_grpc
    from tests.fleetkit import add_servable_model

    data = tmp_path / "coord"
    (target,) = add_servable_model(data, "digits", 10_000)
    coord = coordinator_factory(*FAST, data_dir=data)
    agent = agent_factory(coord.address, "rpi4", "fresh-1", "--inference-port", "0")
    identity, endpoint = agent.state_dir / "identity.json", agent.state_dir / "inference.json"
    wait_for(lambda: identity.exists() and endpoint.exists(), 30, f"agent start; {agent.log}")
    wait_for(lambda: bool(json.loads(identity.read_text())["device_id"]), 20, "enrolment")
    device_id = json.loads(identity.read_text())["device_id"]
    address = json.loads(endpoint.read_text())["address"]

    def serving() -> str:
        with grpc.insecure_channel(address) as ch:
            stub = inference_pb2_grpc.InferenceServiceStub(ch)
            status = stub.GetServingStatus(inference_pb2.GetServingStatusRequest(), timeout=5)
        return str(status.variant_id)

    with AdminClient(coord.address, ADMIN_TOKEN) as admin:
        assert admin.get_device(device_id).active_variant == "" and serving() == ""
        r = admin.create_rollout(
            admin_pb2.CreateRolloutRequest(
                model="digits", selector=f"device:{device_id}", gate=gate(soak=60)
            )
        )
        wait_for(lambda: serving() == target, 30, f"activation; {agent.log}")
        assert admin.control_rollout(r.id, "rollback").state == "rolled_back"
        wait_for(lambda: serving() == "", 20, f"the agent to unload; {agent.log}")
        wait_for(lambda: admin.get_device(device_id).active_variant == "", 10, "status")
        assert admin.get_device(device_id).failed_variant == ""
        with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as info:
            inference_pb2_grpc.InferenceServiceStub(ch).Infer(
                inference_pb2.InferRequest(values=inference_pb2.FloatList(values=[0.0] * 8)),
                timeout=5,
            )
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # a restarted agent does not bring the rolled-back variant back
        assert agent.stop() == 0
        endpoint.unlink()
        agent.start()
        wait_for(endpoint.exists, 30, f"agent restart; {agent.log}")
        address = json.loads(endpoint.read_text())["address"]
        assert serving() == ""  # the endpoint starts after the cached variant is restored


def test_small_model_prediction_includes_the_measured_call_overhead() -> None:
    """The audit's case: a tiny variant predicted at 0.035 ms measured 0.209 ms, because one
    call through the runtime costs more than the model's compute. With the per-call overhead
    the agent measured (reported as a metric) in the prediction, that device passes."""
    from edgefleet.coordinator.latency import model_for_device
    from edgefleet.coordinator.rollouts.document import Gate, PlannedDevice
    from edgefleet.coordinator.rollouts.gates import metric_failure
    from edgefleet.coordinator.state.model import Desired, DeviceRecord
    from edgefleet.metric_names import call_overhead_metric

    tiny = facts("tiny", "fp32", 0.98, 10_000, 0.03, macs=20_000)
    record = DeviceRecord(
        id="d", name="d", profile=get_profile("phone-flagship"), instance_key="k",
        credential_sha256="", registered_at=0.0, last_seen=0.0,
        benchmark_macs_per_second=40e9,
    )  # fmt: skip
    bare = model_for_device(record, 45e9, {}, {})
    overhead = {call_overhead_metric("onnxruntime"): 0.17, call_overhead_metric("torch"): 0.3}
    measured = model_for_device(record, 45e9, {}, overhead)
    assert measured.call_overhead_ms == {"onnxruntime": 0.17, "torch": 0.3}
    before, after = bare.predict_ms(tiny, "onnxruntime"), measured.predict_ms(tiny, "onnxruntime")
    assert after == pytest.approx(before + 0.17)

    def planned(predicted: float, baseline: float = 0.0) -> PlannedDevice:
        return PlannedDevice(
            "d", "d", "phone-flagship", 0, "tiny", "tiny", "onnxruntime", 1, predicted,
            Desired(), baseline_latency_ms=baseline,
        )  # fmt: skip

    observed = {"inference_latency_ms": 0.209}
    assert "5.9x the predicted" in metric_failure(observed, Gate(), planned(0.0352))
    assert metric_failure(observed, Gate(), planned(after)) == ""
    # a real regression still fails, and the message names the device's own baseline
    slow = metric_failure({"inference_latency_ms": 2.0}, Gate(), planned(after, 0.2))
    assert "the predicted" in slow and "baseline 0.2 ms" in slow
    # an overhead the agent reported only after the rollout was planned still counts
    late = {**observed, call_overhead_metric("onnxruntime"): 0.17}
    assert metric_failure(late, Gate(), planned(0.0352)) == ""
    # the refined model (the device's baseline on another variant) keeps the overhead
    refined = measured.refined(tiny, "onnxruntime", observed_ms=after * 2)
    assert refined.call_overhead_ms == measured.call_overhead_ms
    assert refined.predict_ms(tiny, "onnxruntime") == pytest.approx(after * 2)


def test_the_agent_measures_a_call_overhead_per_runtime() -> None:
    from edgefleet.agent.runtimes.overhead import measure_call_overheads

    measured = measure_call_overheads(get_profile("rpi4"), calls=5, gap=0.0)
    assert "onnxruntime" in measured and measured["onnxruntime"] > 0
    assert measure_call_overheads(get_profile("cortex-m4"), calls=5, gap=0.0) == {}  # mcu-sim
