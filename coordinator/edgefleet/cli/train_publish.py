"""``train start``, step 4 of 4: publish the finished run.

The outcome first (a failed run exits 1, with its summary under ``--json``), then its test
accuracy against what it started from, then -- for a registered MODEL, ``--register``,
``--rebuild`` or ``--deploy`` -- the new model ``MODEL-ft-RUN`` in the variant store, its
rebuilt variants and its rollout. A model that lost accuracy is still published, never quietly.
This is the one ``train`` step that builds models (and so imports torch, through model ops).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edgefleet.cli.common import client, err_console, fail, out, print_json
from edgefleet.cli.train_follow import summarize
from edgefleet.cli.train_validate import FL_DATASET, fl_spec

if TYPE_CHECKING:
    from edgefleet.cli.train_validate import RunPlan
    from edgefleet.variant_store import ModelEntry, VariantStore
    from edgefleet.zoo import ArchitectureSpec


def publish(plan: RunPlan, doc: dict[str, Any]) -> None:
    """Report the finished run ``doc``; register, rebuild and deploy its result as planned."""
    o = plan.options
    summary = summarize(doc)
    if doc["state"] != "succeeded":
        if o.as_json:
            print_json(summary)
            raise typer.Exit(1)
        raise fail(f"run {plan.run_name} {doc['state']}: {doc.get('reason') or ''}")
    if plan.lora is not None:
        _publish_lora(plan, doc, summary)
        return
    accuracy = _accuracy(doc, plan.store, plan.base_entry)
    summary["test_accuracy"] = accuracy
    if not o.as_json:
        out.print(_accuracy_line(accuracy), highlight=False)
        out.print(f"weights: {plan.run_dir / 'final.npz'}", highlight=False)
    if plan.register and plan.store is not None:
        if accuracy["worse_than_base"]:
            _warn_worse(accuracy, plan.new_model, o.deploy)
        summary.update(_publish(
            plan.store, plan.new_model, plan.arch, plan.base_entry, plan.run_dir / "final.npz",
            plan.recipes, o.deploy, o.deploy_strategy, o.latency_runs, o.coordinator,
            o.admin_token, o.as_json,
        ))  # fmt: skip
    if o.as_json:
        print_json(summary)


def _publish_lora(plan: RunPlan, doc: dict[str, Any], summary: dict[str, Any]) -> None:
    """A LoRA run's outcome: held-out perplexity from the base to the result (the mean over
    devices, each on its own text), then ``LM-ft-RUN`` registered (and rolled out) -- as
    adapter variants of the base's own variants when that path is there, else merged."""
    o = plan.options
    curve = summary["perplexity"]
    start, end = curve["initial"], curve["final"]
    if not o.as_json:
        out.print(_perplexity_line(curve), highlight=False)
        out.print(f"adapters: {plan.run_dir / 'final.npz'}", highlight=False)
    if start is not None and end is not None and end > start:
        err_console.print(
            f"[bold red]WARNING: the fine-tuned model is worse than its base[/bold red]: "
            f"held-out perplexity {start:.3f} -> {end:.3f}; registering it as {plan.new_model} "
            "anyway (try more --rounds or --steps, or a smaller --lr)",
            highlight=False,
            soft_wrap=True,
        )
    summary["registered"] = _register_lora(plan)
    if not o.as_json:
        how = summary["registered"]["as"]
        recipes = ", ".join(v["recipe"] for v in summary["registered"]["variants"])
        out.print(
            f"registered {plan.new_model} ({recipes}): "
            + (
                f"adapter variants of {o.model}'s own variants (devices get a small delta)"
                if how == "adapter-variants"
                else f"the adapters merged into {o.model}'s weights (whole variants)"
            ),
            highlight=False,
        )
    if o.deploy:
        try:
            rollout = _rollout(
                plan.new_model, o.deploy, o.deploy_strategy, o.coordinator, o.admin_token
            )
        except Exception as exc:
            raise fail(
                f"registered {plan.new_model}, but the rollout was not created: {exc} "
                f"(retry with `edgefleet deploy {plan.new_model} --to {o.deploy}`)"
            ) from None
        summary["rollout"] = rollout
        if not o.as_json:
            out.print(
                f"rollout {rollout['id']}: {plan.new_model} -> {o.deploy} [{rollout['state']}], "
                f"{len(rollout['devices'])} device(s), {len(rollout['skipped'])} skipped; "
                f"follow it with: edgefleet rollout status {rollout['id']} --watch",
                highlight=False,
            )
    if o.as_json:
        print_json(summary)


def _perplexity_line(curve: dict[str, Any]) -> str:
    start, end, devices = curve["initial"], curve["final"], curve["per_device"]
    if end is None:
        return "held-out perplexity: not reported by the run"
    each = ", ".join(
        f"{d} {v['initial']:.3f}->{v['final']:.3f}" if v["initial"] is not None else f"{d} {v['final']:.3f}"
        for d, v in devices.items()
    )  # fmt: skip
    head = f"{start:.3f} -> {end:.3f}" if start is not None else f"{end:.3f}"
    return f"held-out perplexity {head} (mean of {len(devices)} device(s), own text: {each})"


def _register_lora(plan: RunPlan) -> dict[str, Any]:
    """Register the run's averaged adapters as ``plan.new_model`` (see ``lm_lora``)."""
    from edgefleet.flower import model as fl_model
    from edgefleet.lora import LoRAConfig
    from edgefleet.modelops.lm_lora import load_lm_base, publish_lora_result

    assert plan.lora is not None and plan.store is not None and plan.base_entry is not None
    lora = LoRAConfig(plan.lora.rank, plan.lora.alpha, plan.lora.targets)
    adapters = fl_model.load_params(plan.run_dir / "final.npz")
    try:
        base = load_lm_base(plan.store, plan.base_entry)
        return publish_lora_result(
            plan.store, plan.base_entry, base, lora, adapters, plan.new_model, plan.run_dir
        )
    except Exception as exc:  # the run stands: its adapters are in the run directory
        raise fail(
            f"run {plan.run_name} succeeded, but registering {plan.new_model} failed: {exc} "
            f"(the adapters are in {plan.run_dir / 'final.npz'})"
        ) from None


def _accuracy(
    doc: dict[str, Any], store: VariantStore | None, base_entry: ModelEntry | None
) -> dict[str, Any]:
    """The run's test accuracy against what it started from.

    The baseline is the run's own initial evaluation (same held-out split, same code as the
    final one); for a registered MODEL without it, the base variant's measured accuracy.
    """
    final = (doc.get("final") or {}).get("test_acc")
    initial = (doc.get("initial") or {}).get("test_acc")
    base = None
    if store is not None and base_entry is not None:
        base = store.load(base_entry.base).manifest.get("metrics", {}).get("accuracy")
    baseline = initial if initial is not None else base
    worse = final is not None and baseline is not None and final < baseline
    change = None if final is None or baseline is None else 100 * (final - baseline)
    return {
        "initial": initial,
        "final": final,
        "base": base,
        "change_points": change,
        "worse_than_base": worse,
    }


def _accuracy_line(acc: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "unknown" if v is None else f"{100 * v:.1f}%"

    if acc["final"] is None:
        return "test accuracy: not reported by the run"
    if acc["change_points"] is None:
        return f"test accuracy {pct(acc['final'])}"
    start = acc["initial"] if acc["initial"] is not None else acc["base"]
    return f"test accuracy {pct(start)} -> {pct(acc['final'])} ({acc['change_points']:+.1f} points)"


def _warn_worse(acc: dict[str, Any], new_model: str, deploy: str) -> None:
    """Registering (and deploying) a model that lost accuracy is allowed but never quiet."""
    start = acc["initial"] if acc["initial"] is not None else acc["base"]
    then = f" and deploying it to {deploy}" if deploy else ""
    err_console.print(
        f"[bold red]WARNING: the fine-tuned model is worse than its base[/bold red]: test "
        f"accuracy {100 * acc['final']:.1f}% vs {100 * start:.1f}% "
        f"({acc['change_points']:+.1f} points); registering it as {new_model}{then} anyway "
        "(try more --rounds, --local-epochs or a smaller --lr)",
        highlight=False,
        soft_wrap=True,
    )


def _publish(
    store: VariantStore,
    new_model: str,
    arch: str,
    base_entry: ModelEntry | None,
    weights: Path,
    recipes: list[str],
    deploy: str,
    deploy_strategy: str,
    latency_runs: int,
    coordinator: str,
    admin_token: str,
    as_json: bool,
) -> dict[str, Any]:
    """Register the finished run, rebuild its variants, deploy: each step printed as it ends.

    A failure after registration says what already exists, so the user can finish by hand
    (`edgefleet models build` / `edgefleet deploy`) instead of re-running the federation.
    """
    from edgefleet.zoo import ArchitectureSpec

    def say(msg: str) -> None:
        if not as_json:
            out.print(msg, highlight=False)

    spec = ArchitectureSpec.from_json(base_entry.architecture) if base_entry else fl_spec(arch)
    base = _register(store, new_model, spec, weights, latency_runs)
    say(f"registered {new_model} (base {base[:12]})")
    result: dict[str, Any] = {"registered": {"model": new_model, "base": base, "variants": []}}
    if recipes:
        from edgefleet.modelops.build import BuildOptions, build_variants
        from edgefleet.modelops.measure import LatencyConfig

        options = BuildOptions(
            latency=LatencyConfig(warmup=min(30, latency_runs), runs=latency_runs)
        )
        try:
            ids = build_variants(store, new_model, recipes, options=options)
        except Exception as exc:
            raise fail(
                f"registered {new_model}, but rebuilding failed: {exc} "
                f"(retry with `edgefleet models build {new_model} --recipes ...`)"
            ) from None
        result["registered"]["variants"] = [
            {"recipe": r, "id": v} for r, v in zip(recipes, ids, strict=True)
        ]
        say(f"rebuilt {len(ids)} variant(s): {', '.join(recipes)}")
    if deploy:
        try:
            rollout = _rollout(new_model, deploy, deploy_strategy, coordinator, admin_token)
        except Exception as exc:
            raise fail(
                f"registered {new_model}, but the rollout was not created: {exc} "
                f"(retry with `edgefleet deploy {new_model} --to {deploy}`)"
            ) from None
        result["rollout"] = rollout
        say(
            f"rollout {rollout['id']}: {new_model} -> {deploy} [{rollout['state']}], "
            f"{len(rollout['devices'])} device(s), {len(rollout['skipped'])} skipped; "
            f"follow it with: edgefleet rollout status {rollout['id']} --watch"
        )
    return result


def _register(
    store: VariantStore,
    name: str,
    spec: ArchitectureSpec,
    weights: Path,
    latency_runs: int,
) -> str:
    """Register the run's final weights as model ``name`` (measured, signed fp32 base).

    The FL record keeps every tensor as float32 (BatchNorm's step counter included); each is
    cast back to the dtype the zoo module holds so the strict checkpoint load accepts it.
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from edgefleet.flower import model as fl_model
    from edgefleet.modelops.build import BuildOptions, register_model
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.zoo import build_model

    ref = build_model(spec).state_dict()
    params = fl_model.load_params(weights)
    tensors = {k: torch.from_numpy(np.array(v)).to(ref[k].dtype) for k, v in params.items()}
    checkpoint = weights.with_suffix(".safetensors")
    save_file(tensors, str(checkpoint))
    options = BuildOptions(latency=LatencyConfig(warmup=min(30, latency_runs), runs=latency_runs))
    entry = register_model(store, name, spec, FL_DATASET, checkpoint=checkpoint, options=options)
    return entry.base


def _rollout(
    model: str, selector: str, strategy: str, coordinator: str, admin_token: str
) -> dict[str, Any]:
    """Create a rollout of ``model`` (gates: the coordinator's defaults, as `edgefleet deploy`
    without options; use that command for finer control)."""
    from edgefleet.client.render import rollout_to_dict
    from edgefleet.v1 import admin_pb2

    request = admin_pb2.CreateRolloutRequest(
        model=model,
        selector=selector,
        strategy=strategy,
        waves=[0.05, 0.25, 1.0] if strategy == "waves" else [],
        canary_fraction=0.1 if strategy == "canary" else 0.0,
    )
    with client(coordinator, admin_token) as c:
        return rollout_to_dict(c.create_rollout(request))
