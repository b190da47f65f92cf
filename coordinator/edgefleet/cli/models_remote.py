"""The ``models`` verbs over the API: what ``models add/ls/show/variants/rm`` do when a
coordinator is configured (``--coordinator``, ``$EDGEFLEET_COORDINATOR`` or a context) and no
``--data-dir`` is given. In that mode nothing here reads or writes a data dir: models, datasets
and variants live in the fleet's store behind ModelService, so any host can run these.

``add`` checks what it can before uploading (the architecture, the dataset's shape against the
network, a custom module that stands alone), uploads the module source, the checkpoint and the
``.npz`` as hashed chunked streams, and leaves the model *pending*: a build job on a worker
makes its base variant (``edgefleet models build NAME``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.table import Table

from edgefleet.cli.common import FLAGS_KEY, ca_certificate, settings
from edgefleet.client.admin_client import AdminClientError
from edgefleet.client.jsonout import print_json
from edgefleet.client.models_client import LocalFile, ModelsClient
from edgefleet.v1 import models_pb2

__all__ = ["models_client", "remote_add", "remote_configured"]

BUILTIN_DATASETS = ("digits", "kws")
#: why an exported program is not a checkpoint here, and the one-line way to make it one
PT2_REFUSAL = (
    "{path} is an exported program (torch.export): compression needs the nn.Module, so give "
    "its module source (--arch custom --import-path module:Factory) and its weights: "
    "torch.save(torch.export.load('{path}').state_dict, 'weights.pt'), then --checkpoint "
    "weights.pt"
)
_out = Console() if sys.stdout.isatty() else Console(width=200)


def remote_configured() -> bool:
    """Whether the operator named a coordinator: a flag, the environment or a context."""
    ctx = click.get_current_context(silent=True)
    flags = ctx.meta.get(FLAGS_KEY, {}) if ctx is not None else {}
    return bool(
        flags.get("coordinator") or os.environ.get("EDGEFLEET_COORDINATOR") or settings().context
    )


def models_client() -> ModelsClient:
    chosen = settings()
    return ModelsClient(chosen.coordinator, chosen.admin_token, ca_cert=ca_certificate())


def remote_add(
    name: str,
    *,
    arch: str,
    dataset: str,
    frontend: str,
    width: float,
    epochs: int,
    checkpoint: Path | None,
    import_path: str | None,
    config: str,
    latency_runs: int,
    as_json: bool,
) -> None:
    """Check locally, upload, print the pending model (see the module docstring)."""
    from edgefleet.cli.model_spec import architecture_spec
    from edgefleet.modelops.data import DatasetError, load_dataset
    from edgefleet.zoo import ArchitectureError, with_source

    files: list[LocalFile] = []
    dataset_path = Path(dataset).expanduser()
    if dataset not in BUILTIN_DATASETS:
        if dataset_path.suffix != ".npz" or not dataset_path.is_file():
            raise DatasetError(
                f"--dataset {dataset}: over the API give a built-in "
                f"({', '.join(BUILTIN_DATASETS)}) or an .npz file (x, y[, split, groups])"
            )
        files.append(LocalFile("dataset", dataset_path))
    if checkpoint is not None and checkpoint.suffix == ".pt2":
        raise ArchitectureError(PT2_REFUSAL.format(path=checkpoint))
    if epochs < 1 and checkpoint is None:
        raise ArchitectureError("--epochs must be at least 1")
    data = load_dataset(dataset, None, frontend=frontend)  # the user's own file, read here
    spec = architecture_spec(
        arch, import_path=import_path, checkpoint=checkpoint, config=config, width=width, data=data
    )
    if arch == "custom":
        spec = with_source(spec)
    from edgefleet.modelops.build import check_model_fits

    check_model_fits(None, spec, data)
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise ArchitectureError(f"checkpoint not found: {checkpoint}")
        files.append(LocalFile("checkpoint", checkpoint))
    header = models_pb2.ModelUploadHeader(
        name=name,
        architecture=arch,
        import_path=import_path or "",
        config_json=json.dumps(json.loads(config)) if arch == "custom" else "",
        width=width if arch != "custom" else 0.0,
        epochs=epochs,
        dataset_name="" if files and files[0].kind == "dataset" else dataset,
        frontend=frontend,
        latency_runs=latency_runs,
    )
    with tempfile.TemporaryDirectory() as tmp:
        if spec.module_source is not None:  # the module's text, as the model will keep it
            module = Path(tmp) / f"{(import_path or '').partition(':')[0].rpartition('.')[2]}.py"
            module.write_text(spec.module_source, encoding="utf-8")
            files.insert(0, LocalFile("module_source", module))
        with models_client() as c:
            reply = c.add_model(header, files)
    model = reply.model
    if as_json:
        print_json({"name": model.name, "state": model.state, "stored_bytes": reply.stored_bytes})
        return
    _out.print(
        f"uploaded [bold]{model.name}[/] ({model.architecture}, dataset {model.dataset}, "
        f"{reply.stored_bytes:,} bytes): {model.state}; build its base and variants with "
        f"`edgefleet models build {model.name}`"
    )


def remote_ls(as_json: bool) -> None:
    with models_client() as c:
        models = c.list_models()
    if as_json:
        print_json([json.loads(m.entry_json) for m in models])
        return
    table = Table("name", "architecture", "dataset", "base", "variants")
    for m in models:
        table.add_row(
            m.name, m.architecture, m.dataset, m.base[:12] or "(pending)", str(len(m.variants))
        )
    _out.print(table)


def remote_show(variant_id: str) -> None:
    with models_client() as c:
        reply = c.get_variant(variant_id.strip().lower())
    print_json(json.loads(reply.manifest_json))


def remote_variants(name: str, as_json: bool) -> None:
    with models_client() as c:
        reply = c.get_model(name)
    rows: list[dict[str, Any]] = [
        {
            "id": v.id,
            "recipe": v.recipe,
            "precision": v.precision,
            "bytes": v.bytes,
            "accuracy": v.accuracy,
            "latency_ms": v.latency_ms,
        }
        for v in reply.variants
    ]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "recipe", "precision", "bytes", "acc", "ms p50", title=f"{name}: variants")
    for r in rows:
        table.add_row(
            r["id"][:12],
            r["recipe"],
            r["precision"],
            f"{r['bytes']:,}",
            f"{100 * r['accuracy']:.2f}%",
            f"{r['latency_ms']:.4f}",
        )
    _out.print(table)
    if reply.model.state == "pending":
        typer.echo(f"{name} is pending: `edgefleet models build {name}` builds its base", err=True)


def remote_rm(name: str, as_json: bool) -> None:
    with models_client() as c:
        removed = c.remove_model(name)
    if as_json:
        print_json({"name": name, "removed_variants": removed})
    else:
        typer.echo(f"removed model {name} and {len(removed)} variant(s)")


def remote_export(model: str, variant: str, fmt: str) -> tuple[str, str, bytes]:
    """(variant id, recipe label, artifact bytes) of ``model``'s ``variant`` in ``fmt``."""
    if fmt not in ("tflite", "onnx", "bundle"):
        raise AdminClientError(f"cannot export {fmt} over the API")
    with models_client() as c:
        exported = c.export(model, variant, fmt)
    return exported.header.variant_id, exported.header.recipe, exported.data
