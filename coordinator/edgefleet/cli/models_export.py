"""``edgefleet models export MODEL VARIANT --format tflite|onnx|c --out DIR``.

Why a verb for it: a bundle's files sit content-addressed under ``variants/<sha>/`` next to a
signed manifest; someone flashing a board, or embedding the model in an app, wants the one
artifact their toolchain takes, verified, under a readable name. The bundle is loaded (hash
and signature checked) before anything is written:

* ``tflite``: the full-integer ``model.tflite`` (TFLite Micro, LiteRT), int8 variants only;
* ``onnx``: ``model.onnx`` (every variant has one);
* ``c``: ``<name>_model.c`` and ``<name>_model.h`` for firmware (:mod:`edgefleet.modelops.c_export`);
* ``bundle``: the signed bundle's deterministic archive (what agents download), ``<name>.tar``.

With a coordinator configured and no ``--data-dir`` the artifact comes over the API
(ModelService.ExportVariant, checked against its size and sha256 on arrival); ``c`` is then
made here from the streamed ``.tflite``.

``VARIANT`` is a variant id (or a unique prefix of 6+ hex digits) or a recipe label of the
model, e.g. ``int8-static``. Files are named from the model and the recipe
(``digits_int8_static.tflite``) unless ``--name`` says otherwise. Lives in its own module, mounted
on ``models_app`` by :mod:`edgefleet.cli.models` (with its one-line error handling), to keep that
module's size down.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from edgefleet.cli.model_options import DataDirOpt, JsonOpt, ModelArg
from edgefleet.client.jsonout import print_json

__all__ = ["ExportFormat", "export"]

_HEX = re.compile(r"[0-9a-f]{6,64}")


class ExportFormat(StrEnum):
    TFLITE = "tflite"
    ONNX = "onnx"
    C = "c"
    BUNDLE = "bundle"


class ExportError(Exception):
    """Bad input for ``models export``: one line, no traceback."""


def _variant(store: Any, model: str, wanted: str) -> Any:
    """The verified bundle of ``model``'s variant named by id/prefix or recipe label."""
    entry = store.model(model)
    ids = list(dict.fromkeys([entry.base, *entry.variants]))
    if _HEX.fullmatch(wanted.lower()):
        hits = [v for v in ids if v.startswith(wanted.lower())]
        if len(hits) == 1:
            return store.load(hits[0])
        if len(hits) > 1:
            raise ExportError(
                f"variant prefix {wanted!r} of {model} is ambiguous ({len(hits)} match)"
            )
    by_label = [b for b in (store.load(v) for v in ids) if b.manifest.get("recipe_label") == wanted]
    if len(by_label) == 1:
        return by_label[0]
    labels = sorted({str(store.load(v).manifest.get("recipe_label", "")) for v in ids})
    raise ExportError(
        f"model {model!r} has no variant {wanted!r} (give an id prefix or one of: "
        f"{', '.join(labels)})"
    )


def _tflite_bytes(bundle: Any) -> bytes:
    name = "model.tflite"
    if name in bundle.files:
        return bytes(bundle.file(name))
    mcu = bundle.manifest.get("metrics", {}).get("mcu") or {}
    why = mcu.get("tflite_error") or mcu.get("error")
    reason = f": {why}" if why else " (only static int8 variants carry one)"
    raise ExportError(
        f"variant {bundle.variant_id[:12]} ({bundle.manifest.get('recipe_label', '?')}) has no "
        f"model.tflite{reason}"
    )


def export(
    model: ModelArg,
    variant: Annotated[str, typer.Argument(help="variant id (6+ hex prefix) or recipe label")],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", help="tflite (int8 only), onnx, c (firmware) or bundle"),
    ] = ExportFormat.TFLITE,
    out: Annotated[Path, typer.Option(help="directory to write into (created)")] = Path("."),
    name: Annotated[
        str | None, typer.Option(help="file/C symbol name (default: model and recipe)")
    ] = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a variant's artifact for a device toolchain: .tflite, .onnx or C source + header."""
    try:
        _export(model, variant, fmt, out, name, data_dir, as_json)
    except ExportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _export(
    model: str,
    variant: str,
    fmt: ExportFormat,
    out: Path,
    name: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    from edgefleet.modelops.c_export import CExportError, c_identifier, export_c

    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a directory")
    from edgefleet.cli.models_remote import remote_configured, remote_export

    if data_dir is None and remote_configured():  # over the API: no data dir is read
        wire = "tflite" if fmt is ExportFormat.C else fmt.value
        variant_id, label, data = remote_export(model, variant, wire)
        label = label or variant_id[:12]
    else:
        variant_id, label, data = _local_artifact(model, variant, fmt, data_dir)
    stem = c_identifier(name or f"{model}_{label}")
    files: dict[str, bytes] = {}
    extra: dict[str, Any] = {}
    if fmt is ExportFormat.ONNX:
        files[f"{stem}.onnx"] = data
    elif fmt is ExportFormat.TFLITE:
        files[f"{stem}.tflite"] = data
    elif fmt is ExportFormat.BUNDLE:
        files[f"{stem}.tar"] = data
    else:
        about = f"{model} {label} variant {variant_id}"
        try:
            c = export_c(data, stem, about)
        except CExportError as exc:
            raise ExportError(f"variant {variant_id[:12]}: {exc}") from exc
        files = {n: text.encode() for n, text in c.files.items()}
        extra = {"arena_bytes": c.arena_bytes, "ops": list(c.summary.ops), "symbol": c.name}
    try:
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for file_name, data in files.items():
            path = out / file_name
            path.write_bytes(data)
            written.append({"path": str(path), "bytes": len(data)})
    except OSError as exc:
        raise ExportError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    result = {
        "model": model,
        "variant": variant_id,
        "recipe": label,
        "format": fmt.value,
        "files": written,
        **extra,
    }
    if as_json:
        print_json(result)
        return
    for f in written:
        typer.echo(f"wrote {f['path']} ({f['bytes']:,} bytes)")
    if "arena_bytes" in extra:
        typer.echo(f"tensor arena {extra['arena_bytes']:,} bytes; ops: {', '.join(extra['ops'])}")


def _local_artifact(
    model: str, variant: str, fmt: ExportFormat, data_dir: Path | None
) -> tuple[str, str, bytes]:
    """(variant id, recipe label, bytes) from the local data dir's verified bundle."""
    import io

    from edgefleet.archive import pack_directory
    from edgefleet.variant_store import VariantStore, resolve_data_dir

    bundle = _variant(VariantStore(resolve_data_dir(data_dir)), model, variant)
    label = str(bundle.manifest.get("recipe_label", bundle.variant_id[:12]))
    if fmt is ExportFormat.ONNX:
        return bundle.variant_id, label, bytes(bundle.file("model.onnx"))
    if fmt is ExportFormat.BUNDLE:
        buf = io.BytesIO()
        pack_directory(bundle.path, buf)
        return bundle.variant_id, label, buf.getvalue()
    return bundle.variant_id, label, _tflite_bytes(bundle)
