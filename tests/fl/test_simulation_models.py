"""The deployed model families in a simulated fleet: DS-CNN on keyword spotting (one voice per
device, raw audio, the MFCC computed on the device), each device's round planned under its
memory and the round's scope mix reported; bad options refused in one line.

The fast tests drive our ServerApp's round loop and the agent's ClientApp through an in-process
Grid (:mod:`inline_grid`): Ray's start-up alone is 10-30 s here. The run on Ray is slow-marked.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity
from typer.testing import CliRunner

from edgefleet.cli.main import app as cli
from edgefleet.devtools.fl_sim import (
    FLEET_FILE,
    SimOptions,
    SimulatedClientApp,
    limit_training_budget,
    write_fleet,
)
from edgefleet.fl.contract import Node
from tests.fl.inline_grid import InlineGrid

needs_espeak = pytest.mark.skipif(
    subprocess.run(["which", "espeak-ng"], capture_output=True).returncode != 0,
    reason="espeak-ng is not installed (scripts/install_prereqs.sh)",
)


@pytest.fixture(scope="module")
def kws_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny built-in kws set (10 voices, 6 of them training voices), synthesized once."""
    from edgefleet.datasets.kws import load_kws

    root = tmp_path_factory.mktemp("kws-sim")
    load_kws(root, size="tiny", quiet=True)
    return root


@pytest.fixture
def task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages need a task identity (Flower sets it in the ServerApp process)."""
    for attr in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _opts(kws_dir: Path, **kw: object) -> SimOptions:
    base: dict[str, object] = {
        "devices": 4, "rounds": 1, "fraction": 1.0, "model": "ds-cnn-kws", "groups": 2,
        "base_voices": 0, "mix": "phone-budget:1,rpi4:1", "samples": 12, "local_epochs": 1,
        "data_dir": kws_dir, "kws_size": "tiny",
    }  # fmt: skip
    return SimOptions(**{**base, **kw})  # type: ignore[arg-type]


#: a training budget under full fine-tuning's plan for DS-CNN at batch 16 (about 10 MB) and
#: over the light scopes' (3-5 MB): that device trains fewer tensors instead of failing
TIGHT_BUDGET = 8 * 2**20


@needs_espeak
@pytest.mark.usefixtures("task")
def test_ds_cnn_devices_train_on_their_voice_in_the_scope_their_memory_fits(
    kws_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgefleet.devtools import fl_sim
    from edgefleet.devtools.fl_sim import _round_annotator
    from edgefleet.flower.serverapp import run_rounds

    # the inline grid runs the ClientApp in this process: count this test's messages only
    monkeypatch.setattr(fl_sim, "_ACTOR", dict.fromkeys(fl_sim._ACTOR, 0))
    opts = _opts(kws_dir)
    fleet, settings = write_fleet(tmp_path, opts)
    assert settings.arch == "ds-cnn-kws" and settings.strategy == "fedavg"
    assert settings.frontend  # devices hold raw audio: each computes the MFCC itself
    assert not settings.init_path  # base_voices 0: from random weights (pre-training is slow)
    table = json.loads((tmp_path / FLEET_FILE).read_text())
    # devices of one voice share its shard: raw one-second clips, not features
    paths = {d.group: table[str(d.partition)][Node.DATA_PATH] for d in fleet}
    assert len(set(paths.values())) == 2
    with np.load(paths[0]) as shard:
        assert shard["x_train"].shape[1:] == (1, 1, 16000)
    # one device can spend only TIGHT_BUDGET on training
    tight = fleet[0]
    limit_training_budget(tmp_path, tight, TIGHT_BUDGET)

    grid = InlineGrid(SimulatedClientApp(str(tmp_path / FLEET_FILE)), opts.devices)
    doc = run_rounds(grid, settings)
    assert doc["state"] == "succeeded"
    (r,) = [_round_annotator(settings)(r) for r in doc["rounds"]]
    assert r["failed"] == 0 and len(r["participants"]) == 4
    light = {k: v for k, v in r["scopes"].items() if k != "full"}
    assert r["scopes"]["full"] == 3
    assert list(light.values()) == [1] and set(light) <= {"sparse", "tinytl", "head"}
    trained = r["device_trained_params"]
    assert trained[tight.device] < max(trained.values())
    # the actor records how often torch was imported: once, whatever the messages
    (actor,) = list((tmp_path / "actors").glob("*.json"))  # this process: the inline grid's
    stats = json.loads(actor.read_text())
    assert stats["messages"] == 8  # a facts query and a train message per device
    assert stats["torch_imports"] <= 1


def test_the_scope_table_names_every_scope_and_width_by_its_trained_parameters() -> None:
    from edgefleet.devtools.fl_sim_tasks import ScopeTable

    table = ScopeTable("resnet-8", "", widths=(1.0, 0.25))
    labels = set(table.by_count.values())
    assert {"full", "sparse", "tinytl", "head", "full@0.25", "head@0.25"} <= labels
    full = next(c for c, s in table.by_count.items() if s == "full")
    head = next(c for c, s in table.by_count.items() if s == "head")
    assert table.mix({"a": full, "b": full, "c": head, "d": 7}) == {
        "full": 2, "head": 1, "other": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "gpt-5"],
            "error: --model must be one of mlp, resnet-8, ds-cnn-kws, got 'gpt-5'",
        ),
        (["-n", "0"], "error: --devices must be 1..10000, got 0"),
        (["--fraction", "1.5"], "error: --fraction must be in (0, 1], got 1.5"),
        (
            ["--model", "ds-cnn-kws", "--strategy", "heterofl"],
            "error: --strategy heterofl slices the zoo's width-scalable configs; ds-cnn-kws "
            "(MLPerf Tiny's config) runs fedavg or fedprox",
        ),
    ],
)
def test_bad_options_are_refused_in_one_line_with_exit_2(args: list[str], message: str) -> None:
    res = CliRunner().invoke(cli, ["train", "simulate", "--groups", "2", *args])
    assert res.exit_code == 2, res.output
    assert [line for line in res.output.splitlines() if line.strip()] == [message]


@needs_espeak
def test_more_voices_than_the_kws_set_has_is_refused_in_one_line(
    kws_dir: Path, tmp_path: Path
) -> None:
    args = ["train", "simulate", "--model", "ds-cnn-kws", "-n", "20", "--groups", "9"]
    args += ["--kws-size", "tiny", "--data-dir", str(kws_dir), "--work-dir", str(tmp_path)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --groups 9 voices on devices + 6 to pre-train on: the kws set (tiny) has 6 "
        "training voices"
    ]
    assert "Traceback" not in res.output


@pytest.mark.slow
@needs_espeak
def test_ds_cnn_on_ray_imports_torch_once_per_actor(kws_dir: Path, tmp_path: Path) -> None:
    from edgefleet.devtools.fl_sim import run_simulation

    seen: list[dict[str, object]] = []
    doc = run_simulation(_opts(kws_dir, rounds=2, base_voices=1), tmp_path, seen.append)
    assert doc["state"] == "succeeded", doc.get("reason")
    assert doc["settings"]["init_path"]  # DS-CNN pre-trained on a voice no device holds
    assert [r["round"] for r in seen] == [1, 2]
    assert all(r["scopes"] == {"full": 4} for r in seen)
    actors = doc["simulation"]["actors"]
    assert 1 <= len(actors) <= 2  # one per CPU given to Ray
    assert sum(a["messages"] for a in actors) == 4 + 2 * 4  # facts, then two rounds
    assert all(a["torch_imports"] == 1 for a in actors if a["messages"] > 1)


def test_waiting_for_a_submitted_run_ends_with_its_record_or_its_deadline(tmp_path: Path) -> None:
    import os

    from edgefleet.devtools.fl_sim_flwr import _wait_for_record

    progress, log = tmp_path / "progress.json", tmp_path / "superlink.log"
    with pytest.raises(TimeoutError, match="did not finish within 1s"):
        _wait_for_record(progress, os.getpid(), log, deadline_s=1.0)  # never written
    progress.write_text(json.dumps({"state": "failed", "reason": "boom"}))
    _wait_for_record(progress, os.getpid(), log, deadline_s=60.0)  # returns: the run ended
