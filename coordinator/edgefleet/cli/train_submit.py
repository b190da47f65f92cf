"""``train start``, step 2 of 4: submit the run to a SuperLink (and ``train stop``'s ``flwr stop``).

The first step with side effects: it creates the run directory, writes the ServerApp's config
(and MODEL's base weights as the starting point), starts the loopback federation for
``--local N`` and submits the run. :func:`submit` is a context manager because that federation
has to outlive submission: it is stopped when the caller has finished following the run
(``train_follow``), however that ends. Everything that talks to Flower's SuperLink is here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.cli.common import fail

if TYPE_CHECKING:
    from edgefleet.cli.train_validate import RunPlan
    from edgefleet.variant_store import ModelEntry, VariantStore


@dataclass(frozen=True)
class Submission:
    """A submitted run: Flower's run id and the SuperLink it runs on."""

    run_id: int
    address: str


@contextmanager
def submit(plan: RunPlan) -> Iterator[Submission]:
    """Create the run's directory and config, start ``--local`` devices, submit the run.

    The federation (if any) runs until the ``with`` block ends.
    """
    o, run_dir = plan.options, plan.run_dir
    run_dir.mkdir(parents=True)
    init = o.init
    if plan.base_entry is not None and init is None and plan.store is not None and not plan.lora:
        init = _base_weights(plan.store, plan.base_entry, run_dir / "init.npz")
    config: dict[str, object] = {
        "num-rounds": o.rounds, "strategy": o.strategy, "min-devices": o.min_devices,
        "select": o.select, "arch": plan.arch, "lr": o.lr, "local-epochs": o.local_epochs,
        "proximal-mu": o.proximal_mu, "dp": o.dp, "dp-noise": o.dp_noise, "dp-clip": o.dp_clip,
        "round-timeout": o.round_timeout, "out-dir": str(run_dir),
        "buffer": o.buffer, "max-staleness": o.max_staleness, "update-codec": o.update_codec,
        "secure-agg": o.secure_agg,
    }  # fmt: skip
    if init is not None:
        config["init-path"] = str(init.absolute())
    if plan.lora is not None:
        config.update(_lora_config(plan))
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    fed = None
    try:
        if o.local:
            from edgefleet.devtools.fl_local import LocalFederation

            fed = LocalFederation(
                run_dir / "federation", num_nodes=o.local, profiles=o.profiles.split(","),
                data_paths=_text_devices(o.local, run_dir / "text") if plan.lora else None,
            ).start()  # fmt: skip
            if plan.lora is None:  # a LoRA run is scored on the devices' own held-out text
                config["test-path"] = str(fed.root / "test.npz")
            address = fed.address
        else:
            address = plan.superlink
        from edgefleet.coordinator.fl.superlink import submit as submit_app
        from edgefleet.coordinator.fl.superlink import write_app

        app = write_app(run_dir / "app", config)
        ca = None
        if fed is not None and fed.flower_tls is not None:
            ca = fed.flower_tls.ca
        elif plan.superlink_ca is not None:
            ca = plan.superlink_ca.absolute()
        meta: dict[str, object] = {
            "superlink": address,
            "superlink_ca": str(ca) if ca else None,
            "flwr_home": str(run_dir / "flwr-home"),
            "state": "submitted",
        }
        (run_dir / "meta.json").write_text(json.dumps(meta))
        run_id = submit_app(app, run_dir / "flwr-home", address, ca=ca)
        meta["flwr_run_id"] = run_id
        (run_dir / "meta.json").write_text(json.dumps(meta))
        yield Submission(run_id, address)
    finally:
        if fed is not None:
            fed.stop()


def stop_submitted(runs_dir: Path, name: str) -> None:
    """Stop run ``name`` on its SuperLink (``flwr stop``) and mark its record stopped."""
    from edgefleet.coordinator.fl.superlink import stop_run

    meta_path = runs_dir / name / "meta.json"
    if not meta_path.exists():
        raise fail(f"no run {name!r} in {runs_dir}")
    meta = json.loads(meta_path.read_text())
    if "flwr_run_id" not in meta:
        raise fail(f"run {name!r} was never submitted")
    ca = Path(meta["superlink_ca"]) if meta.get("superlink_ca") else None
    stop_run(Path(meta["flwr_home"]), meta["superlink"], int(meta["flwr_run_id"]), ca)
    meta["state"] = "stopped"
    meta_path.write_text(json.dumps(meta))


def _base_weights(store: VariantStore, entry: ModelEntry, path: Path) -> Path:
    """The registered model's base weights as the FL initial ``.npz`` (state-dict order)."""
    import numpy as np

    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.build import load_torch_model

    module = load_torch_model(store.load(entry.base))
    params = {k: v.detach().numpy().astype(np.float32) for k, v in module.state_dict().items()}
    return fl_model.save_params(params, path)


#: text per built-in ``--local`` device (``benchmarks/lm_lora.py``'s; ~20 % of it held out)
LOCAL_TEXT_BYTES = 150_000


def _lora_config(plan: RunPlan) -> dict[str, object]:
    """The run-config keys of a federated LoRA run: the base (recovered from the registered
    LM's signed graph) and the initial adapters in the run directory, which the devices' base
    path names (devices on another host hold the same file at ``lm-base-path``)."""
    from edgefleet.lora import LoRAConfig
    from edgefleet.modelops.lm_lora import load_lm_base, prepare_lora_run

    assert plan.lora is not None and plan.store is not None and plan.base_entry is not None
    lora = LoRAConfig(plan.lora.rank, plan.lora.alpha, plan.lora.targets)
    base = load_lm_base(plan.store, plan.base_entry)
    run = prepare_lora_run(base, lora, plan.run_dir / "lora", steps=plan.lora.steps)
    return {
        **run.run_config(), "lr": plan.lora.lr, "batch-size": 8,
        "node-wait-timeout": max(60.0, plan.options.round_timeout),
    }  # fmt: skip


def _text_devices(n: int, out: Path) -> list[Path]:
    """``--local N`` devices' text: standard-library packages by source, one shard each."""
    from edgefleet.datasets.text_shards import save_text_shard, stdlib_package_shards

    shards = stdlib_package_shards(n, max_bytes=LOCAL_TEXT_BYTES)
    return [save_text_shard(s, out / f"device-{i}.npz") for i, s in enumerate(shards)]
