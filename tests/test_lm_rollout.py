"""A language model through a staged rollout: a variant and a context limit per device, MCUs
skipped with the reason, gates on time to first token and decode rate.

The fast tests run a real coordinator with scripted devices (the real device API; the test
decides what they report) over LM manifests at SmolLM2-135M's size: the coordinator reads only
manifests, so no model is trained or exported, and at that size the Pi Zero 2 W's decode-speed
budget sets a shorter context than the model's, which the desired state carries to it. The slow
test runs real agents serving a tiny ByteLM through onnxruntime and generates through
``edgefleet infer --prompt``: the agent holds the context selection gave it, not the manifest's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.catalog import get_profile
from edgefleet.client.admin_client import AdminClient
from edgefleet.coordinator.lm_explain import explain_lm
from edgefleet.coordinator.rollouts.gates import rollback_cause
from edgefleet.variant_store import ModelEntry, VariantStore
from tests.conftest import ADMIN_TOKEN, AgentProc, CoordinatorProc, cli_env, free_port, wait_for
from tests.fleetkit import ScriptedDevice

FAST = ("--offline-after", "30", "--heartbeat-interval", "0.5", "--rollout-interval", "0.2")
#: SmolLM2-135M's cache geometry (30 layers, 3 KV heads of 64, fp32 cache) and context
KV_PER_POSITION = 2 * 30 * 3 * 64 * 4
CONTEXT = 8192
#: recipe -> (weight bits, bytes): 135M parameters at fp32 and at int4 with fp32 scales
SIZES = {"fp32": (32, 540_000_000), "int4-g32": (4, 84_000_000)}


def lm_body(model: str, recipe: str, bits: int, size: int) -> dict[str, Any]:
    """An LM manifest as :func:`edgefleet.modelops.lm_bundle.lm_manifest` writes one."""
    return {
        "model": model,
        "task": "language-model",
        "kind": "language-model",
        "architecture": {"arch": "byte-lm", "config": {}},
        "recipe_label": recipe,
        "recipe": {"name": recipe, "bits": bits, "group": 32 if bits == 4 else 0},
        "precision": "fp32" if bits == 32 else "int4-weight-only",
        "input": {"shape": [1, 1], "dtype": "int64"},
        "language_model": {
            "vocab": 256,
            "layers": 30,
            "heads": 3,
            "head_dim": 64,
            "context": CONTEXT,
            "kv_dtype": "float32",
            "kv_bytes_per_position": KV_PER_POSITION,
        },
        "runtimes": {"onnxruntime": {"file": "model.onnx"}},
        "metrics": {"size_bytes": size},
    }


def add_lm(store: VariantStore, name: str) -> dict[str, str]:
    ids = {
        r: store.put(lm_body(name, r, b, s), {"model.onnx": r.encode()})
        for r, (b, s) in SIZES.items()
    }
    store.add_model(
        ModelEntry(
            name=name,
            architecture={"arch": "byte-lm", "config": {}},
            dataset="text",
            base=ids["fp32"],
            variants=[ids["int4-g32"]],
            source={"task": "language-model"},
        )
    )
    return ids


@dataclass
class Fleet:
    coord: CoordinatorProc
    ids: dict[str, str]
    devices: dict[str, ScriptedDevice]
    manifests: list[tuple[str, Mapping[str, Any]]]
    seq: list[int] = field(default_factory=lambda: [10_000])

    def cli(self, *args: str) -> Any:
        from edgefleet.cli.app import app

        return CliRunner().invoke(app, list(args), env=cli_env(self.coord.address))

    def report(self, device: ScriptedDevice, **metrics: float) -> None:
        for name, value in metrics.items():
            self.seq[0] += 1
            device.report_metric(name, value, seq=self.seq[0])

    def run_until(self, rollout_id: str, states: tuple[str, ...], *names: str) -> Any:
        deadline = time.monotonic() + 60  # generous: a loaded 2-core box
        with AdminClient(self.coord.address, ADMIN_TOKEN) as admin:
            while True:
                for n in names:
                    self.devices[n].heartbeat()
                    self.devices[n].obey()
                rollout = admin.get_rollout(rollout_id)
                if rollout.state in states:
                    return rollout
                assert time.monotonic() < deadline, f"stuck: {rollout.state} {rollout.message}"
                time.sleep(0.1)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    data = tmp_path_factory.mktemp("lmroll") / "coord"
    store = VariantStore(data)
    ids = add_lm(store, "smol")
    manifests = [(i, store.load(i).manifest) for i in ids.values()]
    coord = CoordinatorProc(data, free_port(), list(FAST)).start()
    try:
        devices = {
            n: ScriptedDevice.register(coord.address, n, p)
            for n, p in (
                ("phone", "phone-flagship"),
                ("pi", "rpi4"),
                ("zero", "rpi-zero2w"),
                ("m4", "cortex-m4"),
            )
        }
        yield Fleet(coord, ids, devices, manifests)
    finally:
        coord.stop()


def test_an_lm_rolls_out_with_each_devices_variant_and_context_and_mcus_are_skipped(
    fleet: Fleet,
) -> None:
    got = fleet.cli(
        "deploy", "smol", "--to", "all", "--strategy", "canary", "--canary", "34",
        "--soak", "0.2", "--min-inferences", "0", "--json",
    )  # fmt: skip
    assert got.exit_code == 0, got.output
    rollout = json.loads(got.stdout)
    planned = {d["name"]: d for d in rollout["devices"]}
    assert set(planned) == {"phone", "pi", "zero"}
    for name, d in planned.items():  # what LM selection picked, variant and context
        sel = explain_lm(get_profile(fleet.devices[name].profile.name), fleet.manifests)
        assert sel.winner is not None
        assert (d["variant_id"], d["context_limit"]) == (
            sel.winner.facts.id,
            sel.winner.context_limit,
        )
    assert planned["pi"]["context_limit"] == CONTEXT  # the model's own context
    assert 64 <= planned["zero"]["context_limit"] < CONTEXT  # its decode-speed budget
    assert planned["zero"]["variant_id"] == fleet.ids["int4-g32"]  # fp32 is over its RAM
    (skipped,) = rollout["skipped"]
    assert skipped["name"] == "m4" and skipped["reason"].startswith("refused: mcu")
    done = fleet.run_until(rollout["id"], ("succeeded", "rolled_back"), "phone", "pi", "zero")
    assert done.state == "succeeded", done.message
    # the context limit travels to each device with its desired state
    for name, d in planned.items():
        desired = fleet.devices[name].heartbeat()
        assert (desired.variant_id, desired.context_limit) == (d["variant_id"], d["context_limit"])
    table = fleet.cli("rollout", "status", rollout["id"])
    assert f"(context {planned['zero']['context_limit']})" in table.stdout


def test_generation_gates_hold_without_evidence_pass_and_roll_back(fleet: Fleet) -> None:
    pi = fleet.devices["pi"]
    gates = ("--max-ttft-ms", "500", "--min-tokens-per-s", "5", "--min-inferences", "1")

    def deploy() -> str:
        got = fleet.cli(
            "deploy", "smol", "--to", f"device:{pi.device_id}", "--soak", "0.2",
            "--wave-timeout", "60", *gates, "--json",
        )  # fmt: skip
        assert got.exit_code == 0, got.output
        doc = json.loads(got.stdout)
        return str(doc["id"])

    pi.heartbeat()
    pi.obey()
    rid = deploy()
    fleet.report(pi, **{f"inference_variant_count_{pi.active[:12]}": 3.0})
    with AdminClient(fleet.coord.address, ADMIN_TOKEN) as admin:
        wait_for(
            lambda: "no generation reported yet" in admin.get_rollout(rid).message,
            60,
            "a generation gate holding on no evidence",
        )
        assert admin.get_rollout(rid).gate.max_ttft_ms == 500
    fleet.report(pi, generation_ttft_ms=120.0, generation_tokens_per_s=40.0)
    assert fleet.run_until(rid, ("succeeded", "rolled_back"), "pi").state == "succeeded"

    rid = deploy()
    fleet.report(pi, generation_ttft_ms=900.0)
    slow = fleet.run_until(rid, ("succeeded", "rolled_back"), "pi")
    assert slow.state == "rolled_back"
    assert "time to first token 900 ms > 500 ms" in slow.message
    assert rollback_cause(slow.message) == "ttft"

    rid = deploy()
    fleet.report(pi, generation_ttft_ms=100.0, generation_tokens_per_s=2.0)
    crawl = fleet.run_until(rid, ("succeeded", "rolled_back"), "pi")
    assert crawl.state == "rolled_back"
    assert "decode 2 tokens/s < 5 tokens/s" in crawl.message
    assert rollback_cause(crawl.message) == "decode_speed"


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-ttft-ms", "-1"), ("--min-tokens-per-s", "nan")]
)
def test_a_bad_generation_gate_is_one_line(fleet: Fleet, flag: str, value: str) -> None:
    got = fleet.cli("deploy", "smol", flag, value)
    assert got.exit_code == 2 and f"{flag} must be a finite number >= 0" in got.output


@pytest.mark.slow
def test_real_agents_serve_the_rolled_out_lm_within_their_context_limit(
    tmp_path: Path,
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
) -> None:
    """Three real agents (onnxruntime) take a tiny ByteLM through a rollout and stream an
    answer through ``edgefleet infer --prompt``; the Zero 2 W holds the shorter context its
    selection gave it. A model small enough to export in a test fits every Pi at its full
    context, so its manifests claim the KV cache per position of a model ~10,000x larger
    (what selection sizes); the agents compute with the real graph."""
    import torch

    from edgefleet.modelops.lm_bundle import lm_manifest
    from edgefleet.modelops.lm_compress import build_lm_variants
    from edgefleet.zoo import ByteLM

    data = tmp_path / "coord"
    store = VariantStore(data)
    torch.manual_seed(0)
    model = ByteLM(dim=32, layers=1, heads=2, context=256).eval()
    ids = {}
    for v in build_lm_variants(model, tmp_path / "onnx", ("fp32", "int4-g32")):
        body = lm_manifest("tiny", model, v)
        body["language_model"]["kv_bytes_per_position"] = 2_400_000
        ids[v.recipe] = store.put(body, {"model.onnx": v.path.read_bytes()})
    store.add_model(
        ModelEntry("tiny", {"arch": "byte-lm", "config": model.config()}, "text", ids["fp32"],
                   [ids["int4-g32"]], {"task": "language-model"})
    )  # fmt: skip
    coord = coordinator_factory(*FAST, data_dir=data)
    agents = {
        n: agent_factory(coord.address, p, n, "--inference-port", "0")
        for n, p in (("phone", "phone-flagship"), ("pi", "rpi4"), ("zero", "rpi-zero2w"))
    }
    ScriptedDevice.register(coord.address, "m4", "cortex-m4")
    fleet = Fleet(coord, ids, {}, [])
    with AdminClient(coord.address, ADMIN_TOKEN) as admin:
        wait_for(lambda: len(admin.list_devices()) == 4, 90, "three agents registered")
    got = fleet.cli(
        "deploy", "tiny", "--strategy", "canary", "--soak", "0.2", "--min-inferences", "0",
        "--json",
    )  # fmt: skip
    assert got.exit_code == 0, got.output
    rollout = json.loads(got.stdout)
    limits = {d["name"]: d["context_limit"] for d in rollout["devices"]}
    assert limits["pi"] == limits["phone"] == 256 and 64 <= limits["zero"] < 256
    assert [s["name"] for s in rollout["skipped"]] == ["m4"]
    with AdminClient(coord.address, ADMIN_TOKEN) as admin:
        wait_for(
            lambda: admin.get_rollout(rollout["id"]).state in ("succeeded", "rolled_back"),
            180,
            "the LM rollout to end",
        )
        done = admin.get_rollout(rollout["id"])
    assert done.state == "succeeded", done.message
    answer = fleet.cli(
        "infer", str(agents["zero"].state_dir), "--prompt", "def ", "--max-tokens", "8"
    )
    assert answer.exit_code == 0, answer.output
    assert len(answer.stdout_bytes) == 8 + 1
    assert f"(context {limits['zero']})" in answer.stderr
    long = "x" * (limits["zero"] + 10)  # fits the model's 256 positions, not the Zero's limit
    refused = fleet.cli("infer", str(agents["zero"].state_dir), "--prompt", long)
    assert refused.exit_code == 1
    assert (
        f"INVALID_ARGUMENT: prompt is {len(long)} tokens but the variant holds "
        f"{limits['zero']} positions" in refused.stderr
    )
    served = fleet.cli("infer", str(agents["pi"].state_dir), "--prompt", long, "--max-tokens", "4")
    assert served.exit_code == 0, served.output
