"""``edgefleet models``: register base models, build compressed variants, compare them.

Mounted by ``edgefleet.cli.main`` as ``app.add_typer(models_app, name="models")``. Torch and
the compression stack are imported inside the commands that need them, so ``edgefleet --help``
and ``models ls`` stay fast. Every failure is one ``error: ...`` line on stderr and exit code 1
(set ``EDGEFLEET_DEBUG=1`` to see the traceback instead).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from edgefleet.cli.completion import complete_datasets, complete_recipes
from edgefleet.cli.model_options import DataDirOpt, JsonOpt, ModelArg
from edgefleet.client.jsonout import print_json

__all__ = ["models_app"]

models_app = typer.Typer(
    help="Register models and build compressed, measured, signed variants.",
    no_args_is_help=True,
)
# Piped output (CI logs, the README) gets a wide console so table columns are not truncated.
_out = Console() if sys.stdout.isatty() else Console(width=200)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, not a bug (only from modules already loaded)."""
    from edgefleet.bundle import BundleError
    from edgefleet.client.admin_client import AdminClientError
    from edgefleet.modelops.data import DatasetError
    from edgefleet.modelops.recipes import RecipeError
    from edgefleet.variant_store import StoreError

    errors: list[type[BaseException]] = [BundleError, StoreError, RecipeError, DatasetError]
    errors.append(AdminClientError)  # the verbs over the API (models_remote)
    zoo = sys.modules.get("edgefleet.zoo")
    if zoo is not None:
        errors += [zoo.ArchitectureError, zoo.CheckpointMismatchError]
    return tuple(errors)


def _cli_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn any exception into one line on stderr and a non-zero exit (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("EDGEFLEET_DEBUG"):
                raise
            known = isinstance(exc, _user_errors())
            prefix = "error" if known else f"error ({type(exc).__name__})"
            typer.echo(f"{prefix}: {exc}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _store(data_dir: Path | None) -> Any:
    from edgefleet.variant_store import VariantStore, resolve_data_dir

    return VariantStore(resolve_data_dir(data_dir))


def _rows(store: Any, name: str) -> list[dict[str, Any]]:
    from edgefleet.modelops.build import manifest_summary

    entry = store.model(name)
    return [manifest_summary(store.load(v)) for v in entry.variants]


def _progress_bar(total: int) -> tuple[Any, Callable[[str, str], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = bar.add_task("starting", total=total)

    def update(label: str, stage: str) -> None:
        if stage == "done":
            bar.update(task, advance=1, description=f"built {label}")
        else:
            bar.update(task, description=f"{label}: {stage}")

    return bar, update


@models_app.command("add")
@_cli_errors
def add(
    name: Annotated[str, typer.Argument(help="a name for the model")],
    arch: Annotated[
        str, typer.Option(help="ds-cnn | ds-cnn-kws | resnet-8 | mlp | custom")
    ] = "ds-cnn",
    dataset: Annotated[
        str,
        typer.Option(
            help="digits, or your data: an .npz (x, y[, split, groups]) or a folder "
            "DIR/<label>/*.wav|png|jpg",
            autocompletion=complete_datasets,
        ),
    ] = "digits",
    sample_rate: Annotated[int, typer.Option(help="audio folders: sample rate, Hz")] = 16000,
    window: Annotated[float, typer.Option(help="audio folders: window length, s")] = 1.0,
    image_size: Annotated[
        str, typer.Option(help="image folders: HxW every image is resized to")
    ] = "32x32",
    image_mode: Annotated[str, typer.Option(help="image folders: L (grayscale) or RGB")] = "L",
    frontend: Annotated[
        str,
        typer.Option(
            help="signal frontend in the model: mfcc (audio: 49x10 MFCC computed on the "
            "device from raw audio), none (the network takes raw rows), auto (mfcc for audio)"
        ),
    ] = "auto",
    width: Annotated[float, typer.Option(help="width multiplier of zoo architectures")] = 1.0,
    epochs: Annotated[int, typer.Option(help="training epochs for the base model")] = 30,
    checkpoint: Annotated[
        Path | None, typer.Option(help="load these weights instead of training")
    ] = None,
    import_path: Annotated[
        str | None, typer.Option(help="custom model factory, 'package.module:Factory'")
    ] = None,
    config: Annotated[str, typer.Option(help="JSON kwargs for a custom factory")] = "{}",
    latency_runs: Annotated[int, typer.Option(help="timed runs per runtime")] = 300,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train (or load) a base model and register it with its measured fp32 variant.

    With a coordinator configured and no --data-dir, uploads the model (module source,
    checkpoint) and the .npz dataset to it instead; a build job makes the base there."""
    from edgefleet.cli.model_spec import architecture_spec
    from edgefleet.cli.models_remote import remote_add, remote_configured

    if data_dir is None and remote_configured():
        remote_add(
            name,
            arch=arch,
            dataset=dataset,
            frontend=frontend,
            width=width,
            epochs=epochs,
            checkpoint=checkpoint,
            import_path=import_path,
            config=config,
            latency_runs=latency_runs,
            as_json=as_json,
        )
        return
    from edgefleet.modelops.build import BuildOptions, check_model_fits, register_model
    from edgefleet.modelops.data import DatasetError, load_dataset
    from edgefleet.modelops.measure import LatencyConfig
    from edgefleet.variant_store import StoreError, resolve_data_dir
    from edgefleet.zoo import ArchitectureError

    try:
        h, w = (int(v) for v in image_size.lower().split("x"))
    except ValueError as exc:
        raise DatasetError(f"--image-size {image_size!r}: use HxW, e.g. 32x32") from exc
    data = load_dataset(
        dataset,
        resolve_data_dir(data_dir),
        rate=sample_rate,
        window_s=window,
        size=(h, w),
        mode=image_mode,
        frontend=frontend,
    )
    spec = architecture_spec(
        arch, import_path=import_path, checkpoint=checkpoint, config=config, width=width, data=data
    )
    # Shapes do not depend on the weights: check before the progress bar and any loading, so a
    # model that does not fit the data is one line on its own.
    check_model_fits(None, spec, data)
    if checkpoint is not None and not _has_user_split(dataset):
        typer.echo(
            f"warning: your checkpoint is scored on {data.name}'s test split, made by a seeded "
            "60/20/20 split of all rows; if you trained on any of these rows the score is "
            "inflated: give the .npz a 'split' array marking the rows you trained on as "
            "train/val",
            err=True,
        )
    if epochs < 1 and checkpoint is None:
        raise ArchitectureError("--epochs must be at least 1")
    store = _store(data_dir)
    if any(m.name == name for m in store.models()):
        raise StoreError(f"model {name!r} already exists")
    options = BuildOptions(latency=LatencyConfig(runs=latency_runs))
    bar, update = _progress_bar(1)
    with bar:
        entry = register_model(
            store,
            name,
            spec,
            data,
            epochs=epochs,
            checkpoint=checkpoint,
            options=options,
            progress=update,
        )
    row = _rows(store, name)[0]
    if as_json:
        print_json({"name": entry.name, "base": row})
    else:
        _out.print(
            f"registered [bold]{name}[/] ({arch}): base {row['id'][:12]}, "
            f"test accuracy {100 * row['accuracy']:.2f}%, {row['bytes']} bytes"
        )


def _has_user_split(dataset: str) -> bool:
    """Whether ``--dataset`` is an .npz that names its own train/val/test rows."""
    import numpy as np

    path = Path(dataset).expanduser()
    if path.suffix != ".npz" or not path.is_file():
        return False
    with np.load(path, allow_pickle=False) as npz:
        return "split" in npz.files


@models_app.command("ls")
@_cli_errors
def ls(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """List registered models (the coordinator's, when one is configured)."""
    from edgefleet.cli.models_remote import remote_configured, remote_ls

    if data_dir is None and remote_configured():
        remote_ls(as_json)
        return
    store = _store(data_dir)
    models = store.models()
    if as_json:
        print_json([m.to_json() for m in models])
        return
    table = Table("name", "architecture", "dataset", "base", "variants")
    for m in models:
        table.add_row(m.name, m.architecture["name"], m.dataset, m.base[:12], str(len(m.variants)))
    _out.print(table)


@models_app.command("build")
@_cli_errors
def build(
    name: ModelArg,
    recipes: Annotated[
        str | None,
        typer.Option(
            help="comma-separated recipes, e.g. int8-static,prune-channels:ratio=0.5",
            autocompletion=complete_recipes,
        ),
    ] = None,
    latency_runs: Annotated[int, typer.Option(help="timed runs per runtime")] = 300,
    timeout: Annotated[
        str | None,
        typer.Option(
            help="stop the build job after this long, e.g. 90s, 30m, 2h (default 6h; over "
            "the API only)"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build compressed variants of a model (default: every recipe that applies to it).

    With a coordinator configured (--coordinator, $EDGEFLEET_COORDINATOR or a context) and no
    --data-dir, the build runs as a job on the fleet's `edgefleet worker` processes and its
    progress streams here; with --data-dir it runs in this process on that store."""
    from edgefleet.cli.models_lm import build_lm_locally, lm_recipe_labels
    from edgefleet.modelops.recipes import DEFAULT_RECIPES, RecipeError, parse_recipes

    try:
        parsed = parse_recipes(recipes if recipes else list(DEFAULT_RECIPES))  # validate first
    except RecipeError as exc:  # a usage error: nothing was read or built yet
        if not lm_recipe_labels(recipes):  # LM recipes are checked against the model below
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        parsed = []
    from edgefleet.cli.jobs_cmds import coordinator_configured, parse_duration, run_remote_build

    remote = data_dir is None and coordinator_configured()
    try:
        seconds = parse_duration(timeout) if timeout is not None else 0
    except typer.BadParameter as exc:
        typer.echo(f"error: --timeout {exc}", err=True)
        raise typer.Exit(2) from None
    if timeout is not None and not remote:
        typer.echo("error: --timeout limits a build job (over the API); a local build runs "
                   "in this process until done", err=True)  # fmt: skip
        raise typer.Exit(2)
    if remote:  # a job on the fleet's workers
        labels = ([r.label for r in parsed] or lm_recipe_labels(recipes)) if recipes else []
        run_remote_build(name, labels, latency_runs, as_json, seconds)
        return
    store = _store(data_dir)
    store.model(name)  # fail fast on an unknown model, before importing torch
    if build_lm_locally(store, name, recipes, as_json, _out):  # a language model's recipes
        return

    from edgefleet.modelops.build import BuildOptions, build_variants
    from edgefleet.modelops.measure import LatencyConfig

    if not recipes:  # the defaults: only those that apply to this model, each skip said
        parsed = parse_recipes(_applicable_defaults(store, name))

    options = BuildOptions(latency=LatencyConfig(runs=latency_runs))
    bar, update = _progress_bar(len(parsed))
    with bar:
        ids = build_variants(store, name, parsed, options=options, progress=update)
    if as_json:
        print_json(ids)
    else:
        _out.print(f"built {len(ids)} variant(s) of {name}; see `edgefleet models variants {name}`")


def _applicable_defaults(store: Any, name: str) -> list[str]:
    """The default recipes that apply to model ``name``; skips and notes go to stderr."""
    from edgefleet.modelops.applicable import default_recipes
    from edgefleet.modelops.build import load_torch_model
    from edgefleet.modelops.data import frontend_of, load_dataset
    from edgefleet.zoo import ArchitectureSpec

    entry = store.model(name)
    base = store.load(entry.base)
    spec = ArchitectureSpec.from_json(base.manifest["architecture"])
    data = load_dataset(entry.dataset, store.root, frontend=frontend_of(base.manifest))
    found = default_recipes(load_torch_model(base), spec, data)
    for recipe, why in found.skipped.items():
        typer.echo(f"skipped {recipe}: {why}", err=True)
    for note in found.notes:
        typer.echo(f"note: {note}", err=True)
    return found.recipes


@models_app.command("variants")
@_cli_errors
def variants(
    name: ModelArg,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Table of a model's variants (each bundle verified before it is shown)."""
    from edgefleet.cli.models_remote import remote_configured, remote_variants

    if data_dir is None and remote_configured():
        remote_variants(name, as_json)
        return
    rows = _rows(_store(data_dir), name)
    if as_json:
        print_json(rows)
        return
    table = Table(
        "id",
        "recipe",
        "bytes",
        "weight B",
        "params",
        "MACs",
        "peak mem",
        "acc",
        "ms p50",
        "ms p95",
        title=f"{name}: variants (accuracy on the test split, onnxruntime, batch 1)",
    )
    for r in rows:
        table.add_row(
            r["id"][:12],
            r["recipe"],
            f"{r['bytes']:,}",
            f"{r['weight_bytes']:,}",
            f"{r['params']:,}",
            f"{r['macs']:,}",
            f"{r['peak_memory_bytes']:,}",
            f"{100 * r['accuracy']:.2f}%",
            f"{r['latency_ms']:.4f}",
            f"{r['latency_ms_p95']:.4f}",
        )
    _out.print(table)


@models_app.command("show")
@_cli_errors
def show(
    variant_id: Annotated[str, typer.Argument(help="variant id or unique prefix (6+ hex)")],
    data_dir: DataDirOpt = None,
) -> None:
    """Verify a variant's bundle and print its manifest."""
    from edgefleet.cli.models_remote import remote_configured, remote_show

    if data_dir is None and remote_configured():
        remote_show(variant_id)
        return
    bundle = _store(data_dir).load(variant_id)
    print_json({"id": bundle.variant_id, **bundle.manifest})


@models_app.command("rm")
@_cli_errors
def rm(name: ModelArg, data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
    """Remove a model and the variants no other model uses (refused by a coordinator while
    a device runs one of them or a rollout deploys it)."""
    from edgefleet.cli.models_remote import remote_configured, remote_rm

    if data_dir is None and remote_configured():
        remote_rm(name, as_json)
        return
    from edgefleet.coordinator.shared_store import open_store
    from edgefleet.variant_store import resolve_data_dir

    removed = open_store(resolve_data_dir(data_dir)).remove(name)
    if as_json:
        print_json({"name": name, "removed_variants": removed})
    else:
        typer.echo(f"removed model {name} and {len(removed)} variant(s)")


@models_app.command("report")
@_cli_errors
def report(
    name: ModelArg,
    out: Annotated[Path, typer.Option(help="directory for the plots and table")] = Path("report"),
    data_dir: DataDirOpt = None,
) -> None:
    """Write Pareto plots (accuracy vs bytes, vs latency) as PNG/SVG plus the table."""
    from edgefleet.modelops.report import Point, terminal_plot, write_report

    rows = _rows(_store(data_dir), name)
    paths = write_report(out, name, rows)
    points = [Point(r["recipe"], float(r["bytes"]), float(r["accuracy"])) for r in rows]
    _out.print("accuracy vs bytes (log); ● = Pareto frontier")
    _out.print(terminal_plot(points), markup=False, highlight=False)
    for p in paths:
        _out.print(f"wrote {p}")


# `models export` lives in its own module (device artifacts).
from edgefleet.cli.models_export import export as _export  # noqa: E402

models_app.command("export")(_cli_errors(_export))
