"""Federated LoRA of a registered LM over the API (TrainingService -> ``fl.runs`` -> ServerApp).

Fast: the coordinator's checks of a LoRA request, one field each, with no Flower and no store.
Slow: ``train start LM`` with only a coordinator configured: the replica (no torch) submits the
model's name, the ServerApp recovers the base from the coordinator's variant store, two real
agents holding text shards (``--local-data``, as ``edgefleet simulate --local-data text`` gives
them) train adapters on their SuperNodes for two rounds, the CLI prints held-out perplexity per
round, and the ServerApp registers ``LM-ft-RUN``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.coordinator.errors import InvalidArgument
from edgefleet.coordinator.fl import runs
from edgefleet.coordinator.fl.runs import RunRequest
from edgefleet.lora import LORA_TARGETS
from tests.conftest import ADMIN_TOKEN, ENROLL_TOKEN, AgentProc, CoordinatorProc, wait_for

runner = CliRunner()
TINY = {"vocab": 256, "dim": 32, "layers": 1, "heads": 2, "mlp_ratio": 2, "context": 32}


def test_the_coordinators_lora_targets_match_the_adapters_module() -> None:
    assert runs.LORA_TARGETS == LORA_TARGETS


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"strategy": "heterofl"}, "strategy"),
        ({"dp": "server-fixed"}, "dp"),
        ({"update_codec": "q8"}, "update_codec"),
        ({"secure_agg": True, "min_devices": 3}, "secure_agg"),
        ({"init_weights": b"x"}, "init_weights"),
        ({"lora_targets": ("q", "x")}, "lora_targets"),
        ({"lora_targets": ("q", "q")}, "lora_targets"),
        ({"lora_rank": 5000}, "lora_rank"),
        ({"lora_alpha": float("nan")}, "lora_alpha"),
        ({"lora_steps": 10**6}, "lora_steps"),
        ({"rounds": 0}, "rounds"),  # the numbers of any run still apply
    ],
)
def test_a_lora_request_is_refused_naming_its_field(change: dict[str, object], field: str) -> None:
    good = RunRequest(model="lm", lr=5e-3, lora_rank=4, lora_targets=("q", "v"))
    runs._check_lora(good)  # accepted as is
    with pytest.raises(InvalidArgument) as err:
        runs._check_lora(RunRequest(**{**good.__dict__, **change}))
    assert err.value.field == field


def test_lora_settings_on_a_classifier_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="LoRA fine-tunes a registered language model"):
        runs._check(RunRequest(model="mlp", lora_rank=4))
    config = runs._lora_config(RunRequest(model="lm", lora_steps=3))
    spec = json.loads(str(config["arch-config"]))
    assert config["arch"] == "byte-lm-lora" and config["test-path"] == ""
    assert spec == {"model": "lm", "lora": {"rank": 8, "alpha": 16.0, "targets": ["q", "v"]},
                    "steps": 3}  # fmt: skip


@pytest.mark.slow  # a coordinator, its SuperLink, 2 agents' SuperNodes and 2 LoRA rounds
@pytest.mark.timeout(900)
def test_train_start_of_a_registered_lm_over_the_api_on_agents_with_text(
    coordinator_factory: Callable[..., CoordinatorProc],
    agent_factory: Callable[..., AgentProc],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Agents as ``edgefleet simulate --local-data text`` starts them: each holds one text
    shard (``sim_data``), its federation hands it to its SuperNode as is."""
    import torch

    from edgefleet.cli.train_cmds import train_app
    from edgefleet.devtools.sim_data import group_local_data
    from edgefleet.modelops.lm_bundle import register_lm_model
    from edgefleet.modelops.lm_compress import build_lm_variants
    from edgefleet.variant_store import VariantStore
    from edgefleet.zoo import ByteLM

    torch.manual_seed(0)
    model = ByteLM(**TINY).eval()
    data_dir = tmp_path / "coord"
    store = VariantStore(data_dir)
    variants = build_lm_variants(model, tmp_path / "onnx", ("fp32",))
    register_lm_model(store, "tiny", model, variants, dataset="n")
    coordinator = coordinator_factory("--superlink", "local", data_dir=data_dir)
    info = data_dir / "coordinator.json"
    wait_for(info.exists, 120, "coordinator.json")  # written as the SuperLink is up
    text = group_local_data("text:60000", 2, tmp_path / "text")
    agents = [
        agent_factory(coordinator.address, "rpi4", f"dev-{i}", "--token", ENROLL_TOKEN,
                      "--local-data", str(path))
        for i, path in enumerate(text.paths)
    ]  # fmt: skip
    wait_for(
        lambda: all((a.state_dir / "fl" / "supernode.pid").exists() for a in agents),
        120,
        "the agents' SuperNodes",
    )
    nowhere = tmp_path / "elsewhere"  # no data dir here: everything over the API
    nowhere.mkdir()
    monkeypatch.chdir(nowhere)
    monkeypatch.delenv("EDGEFLEET_DATA_DIR", raising=False)
    monkeypatch.setenv("EDGEFLEET_COORDINATOR", coordinator.address)
    monkeypatch.setenv("EDGEFLEET_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("EDGEFLEET_INSECURE", "1")
    res = runner.invoke(
        train_app,
        ["start", "tiny", "--rounds", "2", "--steps", "6", "--lora-rank", "4", "--lr", "0.01",
         "--name", "r1", "--round-timeout", "600"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("round ")]
    assert len(lines) == 2 and all("held-out perplexity" in ln for ln in lines), res.stdout
    assert "held-out perplexity" in res.stdout.splitlines()[-2] + res.stdout.splitlines()[-1]
    res = runner.invoke(train_app, ["status", "r1", "--json"])
    doc = json.loads(res.stdout)
    assert doc["state"] == "succeeded" and doc["model"] == "tiny"
    assert doc["registered_model"] == "tiny-ft-r1", doc.get("register_error")
    assert doc["perplexity"]["final"] < doc["perplexity"]["initial"]
    assert len(doc["perplexity"]["per_device"]) == 2  # both agents trained and were scored
    assert "tiny-ft-r1" in [m.name for m in VariantStore(data_dir).models()]
    assert list(nowhere.iterdir()) == []
    for a in agents:  # SIGTERM: an agent stops its SuperNode and training worker on the way out
        a.stop()
