"""One DP round of 4 kws devices, one of which only fits a light scope (in-process Grid).

Why shared: client-fixed and server-fixed DP are checked on the same fleet -- our round loop and
the agent's unchanged ClientApp with its mods, a device whose budget is under full fine-tuning's
plan but over the light scopes' -- so both modes see light-scope replies the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgefleet.devtools.fl_sim import (
    FLEET_FILE,
    SimOptions,
    SimulatedClientApp,
    limit_training_budget,
    write_fleet,
)
from edgefleet.flower.run_settings import RunSettings
from edgefleet.flower.serverapp import run_rounds
from tests.fl.inline_grid import InlineGrid

#: the tight device's budget: under DS-CNN full fine-tuning's plan, over the light scopes'
TIGHT_BUDGET = 8 * 2**20


@dataclass(frozen=True)
class LightDpRound:
    """What the round recorded, the settings it ran with and the tight device's id."""

    round: dict[str, Any]
    settings: RunSettings
    tight_device: str


def run_light_dp_round(
    tmp_path: Path, dp: str, noise: float = 0.1, clip: float = 5.0
) -> LightDpRound:
    """One succeeded round of ``dp`` with every device taking part (asserted here)."""
    opts = SimOptions(devices=4, rounds=1, fraction=1.0, model="ds-cnn-kws", groups=2,
                      base_voices=0, mix="phone-budget:1,rpi4:1", samples=8, local_epochs=1,
                      data_dir=tmp_path / "kws", kws_size="tiny")  # fmt: skip
    fleet, settings = write_fleet(tmp_path, opts)
    tight = fleet[0]
    limit_training_budget(tmp_path, tight, TIGHT_BUDGET)
    settings = replace(settings, dp=dp, dp_noise=noise, dp_clip=clip)
    doc = run_rounds(InlineGrid(SimulatedClientApp(str(tmp_path / FLEET_FILE)), 4), settings)
    assert doc["state"] == "succeeded", doc.get("reason")
    (r,) = doc["rounds"]
    assert r["failed"] == 0 and len(r["participants"]) == 4
    trained = r["device_trained_params"]
    assert trained[tight.device] < max(trained.values())  # a light scope and full ones
    return LightDpRound(r, settings, tight.device)
