"""Benchmark: uplink bytes of light-scope devices under server-side DP, whole vs partial replies.

    python -m benchmarks.fl_dp_partial [--json benchmarks/results/fl_dp_partial.json]

Before :class:`edgefleet.flower.strategies.PartialServerSideFixedClipping`, ``--dp
server-fixed`` wrapped Flower's whole-model clipping, so every device replied with the whole
model; now a device replies with the tensors its scope trained. Two measurements:

* ``payload``: the bytes a reply's arrays weigh as serialized in the message
  (:func:`edgefleet.flower.updates.wire_bytes`, the round records' ``bytes_up``) for each
  fine-tuning scope of the deployed conv nets, the trained tensors found with the agent's own
  scoping functions (as :class:`edgefleet.devtools.fl_sim_tasks.ScopeTable` does);
* ``round``: one real round of our ServerApp loop and the agent's ClientApp under
  ``--dp server-fixed`` (4 DS-CNN keyword-spotting devices, one with a training budget that
  only a light scope fits), through the in-process Grid the fast tests use: the round's
  ``bytes_up`` against what four whole models weigh. Needs espeak-ng (the kws voices).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

#: a training budget under DS-CNN's full plan at batch 16 (about 10 MB), over the light ones'
TIGHT_BUDGET = 8 * 2**20


def _bytes(arrays: dict[str, Any]) -> int:
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from edgefleet.flower.strategies import to_record
    from edgefleet.flower.updates import wire_bytes

    for attr in ("_run_id", "_task_id", "_node_id"):  # a Message needs a task identity
        setattr(TaskIdentity, attr, 1)
    return wire_bytes([Message(RecordDict({"arrays": to_record(arrays)}), 1, "train")])


def payload(arch: str) -> dict[str, Any]:
    """Reply bytes per scope: whole model vs the scope's trained tensors."""
    from edgefleet.agent.finetune import SCOPE_ORDER, SPARSE_LAYERS
    from edgefleet.agent.finetune_light import sparse_trainable
    from edgefleet.agent.runtimes.torch_rt import scope_trainable
    from edgefleet.flower import model as fl_model
    from edgefleet.zoo import ArchitectureSpec, build_model

    params = fl_model.initial_params(arch)
    whole = _bytes(params)
    out: dict[str, Any] = {"whole_bytes": whole, "tensors": len(params), "scopes": {}}
    for scope in SCOPE_ORDER:
        spec = ArchitectureSpec(name=arch, config=fl_model.arch_config(arch, 1.0, ""),
                                input_shape=(1, 8, 8))  # fmt: skip
        model = scope_trainable(build_model(spec), "tinytl" if scope == "sparse" else scope)
        if scope == "sparse":
            sparse_trainable(model, SPARSE_LAYERS)
        names = (
            list(params)
            if scope == "full"
            else [n for n, p in model.named_parameters() if p.requires_grad]
        )
        sent = _bytes({k: params[k] for k in names})
        out["scopes"][scope] = {"tensors": len(names), "partial_bytes": sent,
                                "whole_over_partial": round(whole / sent, 2)}  # fmt: skip
    return out


def live_round(root: Path) -> dict[str, Any]:
    """One ``--dp server-fixed`` round of 4 kws devices, one memory-tight."""
    from edgefleet.devtools.fl_sim import (
        FLEET_FILE,
        SimOptions,
        SimulatedClientApp,
        limit_training_budget,
        write_fleet,
    )
    from edgefleet.devtools.fl_sim_tasks import ScopeTable
    from edgefleet.flower import model as fl_model
    from edgefleet.flower.serverapp import run_rounds
    from tests.fl.inline_grid import InlineGrid

    opts = SimOptions(devices=4, rounds=1, fraction=1.0, model="ds-cnn-kws", groups=2,
                      base_voices=0, mix="phone-budget:1,rpi4:1", samples=12, local_epochs=1,
                      data_dir=root / "kws", kws_size="tiny")  # fmt: skip
    fleet, settings = write_fleet(root, opts)
    limit_training_budget(root, fleet[0], TIGHT_BUDGET)
    settings = replace(settings, dp="server-fixed", dp_noise=0.1, dp_clip=5.0)
    grid = InlineGrid(SimulatedClientApp(str(root / FLEET_FILE)), opts.devices)
    t0 = time.monotonic()
    doc = run_rounds(grid, settings)
    (r,) = doc["rounds"]
    whole = _bytes(fl_model.initial_params(settings.arch, override=settings.arch_config))
    scopes = ScopeTable(settings.arch, settings.arch_config).mix(r["device_trained_params"])
    return {"state": doc["state"], "seconds": round(time.monotonic() - t0, 1),
            "scopes": scopes, "bytes_up": r["bytes_up"], "whole_bytes_up": 4 * whole,
            "device_trained_params": r["device_trained_params"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--no-round", action="store_true", help="payload sizes only")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"payload": {a: payload(a) for a in ("ds-cnn-kws", "resnet-8")}}
    print(json.dumps(results["payload"]), flush=True)
    if not args.no_round:
        with tempfile.TemporaryDirectory() as tmp:
            results["round"] = live_round(Path(tmp))
        print(json.dumps(results["round"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
