"""The ESP32-S3 module with 8 MB PSRAM: the catalog's class between the MCUs and the Pis.

Why it exists: every other catalog device either holds DS-CNN's full fine-tuning at batch 16
(phones, Pis: budgets of 128 MB and up) or not even its head (SRAM-only MCUs: at most 353 KB),
so a simulated fleet planned ``full`` everywhere and the light scopes went unexercised at
scale. Checked here with the agent's own planner and the server's own width picker: DS-CNN's
round on this class is a light scope at the configured batch, the MLP's is the whole model;
the default simulation mix deals it; and it serves exactly as the PSRAM-less module does (its
arena stays in on-chip SRAM), so no existing profile's variant changes.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgefleet.catalog import get_profile
from edgefleet.devtools.fl_sim import DEFAULT_MIX, SimOptions, parse_mix, plan_fleet
from edgefleet.fl.budget import DEFAULT_RAM_FRACTION

PSRAM = "esp32-s3-n8r8"


def _budget(profile: str) -> int:
    """The training budget the agent's ClientApp derives from a device's RAM."""
    return int(get_profile(profile).ram_bytes * DEFAULT_RAM_FRACTION)


def test_ds_cnn_plans_a_light_scope_on_the_psram_module_and_full_on_a_pi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgefleet.agent import finetune
    from edgefleet.agent.fl import torch_train
    from edgefleet.agent.fl.torch_train import plan_scope
    from edgefleet.devtools.fl_sim_tasks import ScopeTable
    from edgefleet.zoo import DSCNN, ArchitectureSpec, build_model

    cfg = dict(DSCNN.kws_config(1.0, 12, 1))
    model = build_model(ArchitectureSpec(name="ds-cnn-kws", config=cfg, input_shape=(1, 49, 10)))
    params = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    shape = [1, 1, 49, 10]
    table = ScopeTable("ds-cnn-kws", json.dumps(cfg))

    monkeypatch.setattr(torch_train, "_PLANS", {})  # this process planned nothing yet
    dry_runs: list[str] = []
    real_plan_memory = finetune.plan_memory

    def counted(model: object, scope: str, *args: object) -> object:
        dry_runs.append(scope)
        return real_plan_memory(model, scope, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune, "plan_memory", counted)
    light = plan_scope("ds-cnn-kws", cfg, params, shape, _budget(PSRAM), 16)
    assert light.plan is not None and light.plan.fits
    trained = sum(p.numel() for p in light.model.parameters() if p.requires_grad)
    assert table.by_count[trained] in {"sparse", "tinytl", "head"}  # what a round reports
    assert light.batch_size == 16  # scope before batch: the round's batch is kept
    assert "full" in dry_runs and dry_runs[-1] == light.scope  # wider scopes measured first

    # the next round's weights differ, its shapes do not: the plan is reused, no dry run
    dry_runs.clear()
    again = {k: v + np.float32(0.01) for k, v in params.items()}
    reused = plan_scope("ds-cnn-kws", cfg, again, shape, _budget(PSRAM), 16)
    assert dry_runs == [] and (reused.scope, reused.plan) == (light.scope, light.plan)
    assert float(next(iter(reused.model.state_dict().values())).flatten()[0]) == float(
        next(iter(again.values())).flatten()[0]
    )  # the model is this round's
    other = plan_scope("ds-cnn-kws", cfg, params, shape, _budget(PSRAM) + 1, 16)
    assert dry_runs and other.plan is not None and other.plan.budget == _budget(PSRAM) + 1

    pi = plan_scope("ds-cnn-kws", cfg, params, shape, _budget("rpi-zero2w"), 16)
    assert pi.scope == "full" and pi.batch_size == 16


def test_the_mlp_trains_whole_at_its_batch_on_the_psram_module() -> None:
    from edgefleet.agent.fl.clientapp import _mlp_batch
    from edgefleet.flower import model as fl_model
    from edgefleet.flower.serverapp import pick_width

    profile = get_profile(PSRAM)
    assert pick_width({"ram": profile.ram_bytes}, "mlp", DEFAULT_RAM_FRACTION) == 1.0
    params = {k: np.zeros(s, np.float32) for k, s in fl_model.shapes("mlp", 1.0).items()}
    assert _mlp_batch(params, 16, _budget(PSRAM)) == 16


def test_the_default_mix_deals_a_tenth_of_the_fleet_psram_modules() -> None:
    assert dict(parse_mix(DEFAULT_MIX))[PSRAM] / sum(w for _, w in parse_mix(DEFAULT_MIX)) == 0.1
    fleet = plan_fleet(SimOptions(devices=1000))
    counts = Counter(d.profile for d in fleet)
    assert counts[PSRAM] == 100
    mods = [d for d in fleet if d.profile == PSRAM]
    assert all(d.ram == get_profile(PSRAM).ram_bytes for d in mods)
    assert all(d.battery is not None and d.labels["class"] == "mcu" for d in mods)
    # what `ram >= 2MiB` (the DS-CNN benchmark's selection) keeps: phones, Pis and these
    assert sum(1 for d in fleet if d.ram >= 2 * 2**20) == 850


def test_the_psram_module_serves_as_the_module_without_psram() -> None:
    """Selection fits an MCU's arena in its largest region and costs it by core and clock:
    both equal the N8's, so a variant picked for one is picked for the other."""
    n8, n8r8 = get_profile("esp32-s3"), get_profile(PSRAM)
    same = ("largest_ram_region", "cpu_mhz", "storage_bytes", "precisions", "runtimes")
    assert all(getattr(n8, f) == getattr(n8r8, f) for f in same)
    from edgefleet.perf import mcu_core

    assert mcu_core(n8) is mcu_core(n8r8)
    assert n8r8.ram_bytes > 16 * n8.largest_ram_region  # the PSRAM: training room only


def test_a_benchmark_rerun_replaces_its_configuration_and_keeps_the_others(
    tmp_path: Path,
) -> None:
    from benchmarks.fl_sim import _previous, merge

    def row(model: str, acc: float) -> dict[str, object]:
        return {"model": model, "devices": 1000, "fraction": 0.1, "engine": "superlink",
                "select": "", "acc": acc}  # fmt: skip

    out = tmp_path / "fl_sim.json"
    out.write_text(json.dumps({"rounds": 4, "runs": [row("mlp", 0.6), row("ds-cnn-kws", 0.5)]}))
    rows = merge(_previous(out, 4), [row("ds-cnn-kws", 0.7)])
    assert [(r["model"], r["acc"]) for r in rows] == [("mlp", 0.6), ("ds-cnn-kws", 0.7)]
    assert _previous(out, 3) == []  # other rounds: not comparable, not kept
    out.write_text("{not json")
    assert _previous(out, 4) == []
