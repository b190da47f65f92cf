"""The build pipeline: register a base model, then turn recipes into measured, signed variants.

One function per user-visible action (``register_model``, ``build_variants``), each a straight
line: rebuild the base from its verified bundle -> float steps -> export -> precision step ->
measure -> sign and store -> index. Float prefixes of pipelines are cached within one build so
``prune-channels`` and ``prune-channels+int8-static`` share one pruned network (training is
seeded, so sharing changes no result).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

import edgefleet.version
from edgefleet.bundle import Bundle
from edgefleet.cycles import layers_to_json
from edgefleet.mcu_flash import flash_image, kernels_of_graph
from edgefleet.modelops.c_export import summarize
from edgefleet.modelops.data import (
    Dataset,
    DatasetError,
    frontend_of,
    load_dataset,
    store_dataset,
)
from edgefleet.modelops.mcu import McuExportError, export_mcu
from edgefleet.modelops.measure import (
    LatencyConfig,
    count_layers,
    count_macs,
    host_info,
    measure_onnxruntime,
    measure_torch,
    weight_bytes,
)
from edgefleet.modelops.memplan import plan_memory
from edgefleet.modelops.onnx_export import export_onnx
from edgefleet.modelops.quantize import to_fp16, to_int8_dynamic, to_int8_static
from edgefleet.modelops.recipes import Recipe, RecipeError, parse_recipe
from edgefleet.modelops.tflite_export import (
    TFLITE_FILE,
    TFLITE_LAYOUT,
    TfliteExportError,
    export_tflite,
)
from edgefleet.modelops.tflm_arena import TflmLoadError, tflm_arena
from edgefleet.modelops.train import TrainConfig, evaluate, train
from edgefleet.modelops.transforms import apply_float_step, sparsity
from edgefleet.variant_store import ModelEntry, StoreError, VariantStore
from edgefleet.zoo import (
    ArchitectureSpec,
    build_model,
    load_checkpoint,
    load_state_dict_strict,
    with_source,
)

__all__ = [
    "BuildOptions",
    "Progress",
    "build_variants",
    "load_torch_model",
    "make_variant",
    "manifest_summary",
    "register_model",
]

#: ``progress(recipe_label, stage)`` - stages: "transform", "export", "measure", "sign", "done".
Progress = Callable[[str, str], None]
_PRECISION_BYTES = {"fp32": 4, "fp16": 2, "int8-dynamic": 4, "int8": 1}


@dataclass(frozen=True)
class BuildOptions:
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    seed: int = 0


def _noop(_label: str, _stage: str) -> None:
    return None


def _state_bytes(model: nn.Module, dtype: torch.dtype) -> bytes:
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    return save_safetensors(state)


def load_torch_model(bundle: Bundle) -> nn.Module:
    """Rebuild the float network of a verified bundle (fp32 and fp16 variants carry one)."""
    torch_rt = bundle.manifest["runtimes"].get("torch")
    if torch_rt is None:
        raise StoreError(f"variant {bundle.variant_id[:12]} has no torch weights")
    model = build_model(ArchitectureSpec.from_json(bundle.manifest["architecture"]))
    state = load_safetensors(bundle.file(torch_rt["file"]))
    load_state_dict_strict(model, {k: v.float() for k, v in state.items()})
    return model.eval()


def make_variant(
    model: nn.Module,
    spec: ArchitectureSpec,
    recipe: Recipe,
    data: Dataset,
    options: BuildOptions,
    progress_label: str | None = None,
    progress: Progress = _noop,
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Export, measure and describe a float network under ``recipe``'s precision step.

    Returns ``(manifest_body, files)`` ready for :meth:`VariantStore.put`.
    """
    label = progress_label or recipe.label
    progress(label, "export")
    float_graph = _export_or_one_line(model, spec, label)
    precision = recipe.precision
    files: dict[str, bytes] = {}
    runtimes: dict[str, Any] = {}
    mcu_info: dict[str, Any] | None = None
    if precision == "fp32":
        deploy = float_graph
        files["weights.safetensors"] = _state_bytes(model, torch.float32)
        runtimes["torch"] = {"file": "weights.safetensors", "dtype": "float32"}
    elif precision == "fp16":
        deploy = to_fp16(float_graph)
        files["weights.safetensors"] = _state_bytes(model, torch.float16)
        runtimes["torch"] = {"file": "weights.safetensors", "dtype": "float16"}
    elif precision == "int8-dynamic":
        deploy = to_int8_dynamic(float_graph)
    else:
        step = recipe.steps[-1].params
        calib = data.x_train[: int(step["calibration"])]
        deploy = to_int8_static(float_graph, calib, str(step["method"]))
        try:
            mcu = export_mcu(deploy)
        except McuExportError as exc:
            mcu_info = {"error": str(exc)}
        else:
            files["mcu.json"] = json.dumps(mcu.graph, indent=1, sort_keys=True).encode()
            files["mcu.safetensors"] = _numpy_safetensors(mcu.tensors)
            runtimes["mcu-sim"] = {"graph": "mcu.json", "tensors": "mcu.safetensors"}
            # flash on a device: the model plus the code that runs it (edgefleet.mcu_flash);
            # without a .tflite, mcu-sim runs the JSON graph, which is then the model bytes
            frontend = (data.input_spec().get("frontend") or {}).get("kind")
            mcu_info = {
                **flash_image(
                    len(files["mcu.safetensors"]) + len(files["mcu.json"]),
                    kernels_of_graph(mcu.graph["ops"]),
                    frontend,
                ).to_json(),
                "tensor_bytes": mcu.weight_bytes,
            }
            # The full-integer .tflite (TFLM, LiteRT, mcu-sim run it) and TFLM's own arena.
            try:
                tflite = export_tflite(mcu)
                arena = tflm_arena(tflite)
            except (TfliteExportError, TflmLoadError) as exc:
                mcu_info["tflite_error"] = str(exc)
            else:
                files[TFLITE_FILE] = tflite
                runtimes["mcu-sim"]["model"] = TFLITE_FILE
                # TFLM (microcontrollers) and LiteRT (phones, Pi-class boards) run it as is.
                for name in ("tflm", "litert"):
                    runtimes[name] = {"file": TFLITE_FILE, "layout": TFLITE_LAYOUT}
                mcu_info["tflite"] = {
                    "file": TFLITE_FILE,
                    "bytes": len(tflite),
                    "layout": TFLITE_LAYOUT,
                    **arena.to_json(),
                }
                mcu_info.update(flash_image(len(tflite), summarize(tflite).ops, frontend).to_json())
    onnx_bytes = deploy.SerializeToString()
    files["model.onnx"] = onnx_bytes
    runtimes["onnxruntime"] = {"file": "model.onnx"}

    progress(label, "measure")
    x, y = data.x_test, data.y_test
    measured: dict[str, Any] = {
        "onnxruntime": measure_onnxruntime(onnx_bytes, x, y, options.latency).to_json()
    }
    if "torch" in runtimes:
        dtype = torch.float16 if precision == "fp16" else torch.float32
        measured["torch"] = measure_torch(
            copy.deepcopy(model), x, y, options.latency, dtype
        ).to_json()
    plan = plan_memory(float_graph, _PRECISION_BYTES[precision])
    params = sum(p.numel() for p in model.parameters())
    metrics: dict[str, Any] = {
        "accuracy": measured["onnxruntime"]["accuracy"],
        "latency_ms": measured["onnxruntime"]["latency_ms_p50"],
        "latency_ms_p95": measured["onnxruntime"]["latency_ms_p95"],
        "bytes": len(onnx_bytes),
        # What a sparse model saves once compressed for transfer or flash (zlib, level 9).
        "gzip_bytes": len(zlib.compress(onnx_bytes, 9)),
        "weight_bytes": weight_bytes(deploy),
        "params": int(params),
        "sparsity": round(sparsity(model), 6),
        "macs": count_macs(float_graph),
        "ops": layers_to_json(count_layers(float_graph)),  # per-op work for the MCU cycle model
        "peak_memory_bytes": plan.arena_bytes,
        "peak_memory_lower_bound_bytes": plan.lower_bound_bytes,
        "runtimes": measured,
        "test_samples": len(y),
        "latency_runs": options.latency.runs,
        "host": host_info(),
    }
    if mcu_info is not None:
        metrics["mcu"] = mcu_info
    body = {
        "architecture": spec.to_json(),
        "recipe": recipe.to_json(),
        "recipe_label": recipe.label,
        "precision": precision,
        "input": data.input_spec(),
        # the data's hash and which rows were the test split: every variant of a model the same
        "dataset": data.info,
        "output": {"name": "logits", "shape": [1, data.num_classes], "dtype": "float32"},
        "runtimes": runtimes,
        "metrics": metrics,
        "seed": options.seed,
        "edgefleet_version": edgefleet.version.__version__,
    }
    return body, files


def _export_or_one_line(model: nn.Module, spec: ArchitectureSpec, label: str) -> Any:
    """:func:`export_onnx`, with a failure as one line: its root cause, not ~40 lines.

    torch.export explains a refusal at length, dumps the graphs it traced to stderr and logs
    its shape solver's warnings; all of that is silenced for the call (stderr captured, logging
    disabled up to ERROR) and the error keeps the first line of the innermost cause (e.g.
    "Could not guard on data-dependent expression ...").
    """
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return export_onnx(model, spec.input_shape)
    except Exception as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).strip()
        first = text.splitlines()[0] if text else type(cause).__name__
        raise RecipeError(
            f"{label}: the model cannot be exported to ONNX (torch.export): "
            f"{type(cause).__name__}: {first}"
        ) from exc
    finally:
        logging.disable(previous)


def _numpy_safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def check_model_fits(model: nn.Module | None, spec: ArchitectureSpec, data: Dataset) -> None:
    """A dataset-shaped zero batch through the model: it must run and give (N, classes) logits.

    ``model`` ``None`` builds a fresh one from ``spec``. This runs before any training or
    export so a wrong input or output shape is one line naming both shapes, not the
    exporter's ~40-line trace; a batch of 2 (not 1) so a model that drops or mixes up the
    batch axis is caught too. Only classifiers are registered: every metric, gate and
    selection downstream is top-1 accuracy, which means nothing for, say, an autoencoder.
    """
    if model is None:
        model = build_model(spec)
    model.eval()
    what = spec.import_path if spec.name == "custom" else spec.name
    batch = torch.zeros(2, *data.input_shape)
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as exc:  # any shape error the layers raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatasetError(
            f"{what} does not take dataset {data.name} input {data.input_shape} "
            f"(rows of x): {first}"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise DatasetError(
            f"{what} returns {type(out).__name__}, not a tensor of logits (N, classes)"
        )
    if out.dim() != 2 or out.shape[0] != 2:
        raise DatasetError(
            f"{what} is not a classifier: a batch {tuple(batch.shape)} gives output "
            f"{tuple(out.shape)}, expected (2, {data.num_classes}) logits, one per class of "
            f"{data.name}"
        )
    if out.shape[1] != data.num_classes:
        raise DatasetError(
            f"{what} gives {out.shape[1]} outputs per row but dataset {data.name} has "
            f"{data.num_classes} classes"
        )


def register_model(
    store: VariantStore,
    name: str,
    spec: ArchitectureSpec,
    dataset: str | Dataset,
    *,
    epochs: int = 30,
    checkpoint: Path | None = None,
    options: BuildOptions | None = None,
    progress: Progress = _noop,
) -> ModelEntry:
    """Train (or load from ``checkpoint``) a base model and store it as the ``fp32`` variant.

    ``dataset`` is a built-in name, a path to the user's data, or an already loaded
    :class:`Dataset`; user data is kept in the data dir (with its split) once the model is in.
    """
    options = options or BuildOptions()
    if not name or "/" in name or name.startswith("."):
        raise StoreError(f"illegal model name {name!r}")
    try:
        store.model(name)
    except StoreError:
        pass
    else:
        raise StoreError(f"model {name!r} already exists")
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, store.root)
    if tuple(spec.input_shape) != data.input_shape:
        raise DatasetError(
            f"{spec.name}: architecture input {spec.input_shape} != "
            f"dataset {data.name} input {data.input_shape}"
        )
    spec = with_source(spec)  # a custom module's text travels with the model from here on
    torch.manual_seed(options.seed)
    model = build_model(spec)
    if checkpoint is not None:
        progress("fp32", "load")
        load_state_dict_strict(model, load_checkpoint(checkpoint))
        source: dict[str, Any] = {"checkpoint": str(checkpoint)}
    check_model_fits(model, spec, data)
    if checkpoint is None:
        progress("fp32", "train")
        config = TrainConfig(epochs=epochs, seed=options.seed)
        train(model, data, config)
        source = {"trained": {"epochs": epochs, "lr": config.lr, "seed": options.seed}}
    body, files = make_variant(model, spec, Recipe(()), data, options, "fp32", progress)
    body["model"] = name
    body["parent"] = None
    progress("fp32", "sign")
    variant_id = store.put(body, files)
    store_dataset(data, store.root)
    entry = ModelEntry(name, spec.to_json(), data.name, variant_id, [variant_id], source)
    store.add_model(entry)
    progress("fp32", "done")
    return entry


def build_variants(
    store: VariantStore,
    name: str,
    recipes: Sequence[str | Recipe],
    *,
    options: BuildOptions | None = None,
    progress: Progress = _noop,
) -> list[str]:
    """Build every recipe against model ``name``'s base; return the new variant ids in order."""
    options = options or BuildOptions()
    parsed = [r if isinstance(r, Recipe) else parse_recipe(r) for r in recipes]
    entry = store.model(name)
    base_bundle = store.load(entry.base)
    base = load_torch_model(base_bundle)
    base_spec = ArchitectureSpec.from_json(base_bundle.manifest["architecture"])
    data = load_dataset(entry.dataset, store.root, frontend=frontend_of(base_bundle.manifest))
    base_acc = evaluate(base, data.x_test, data.y_test)
    cache: dict[str, tuple[nn.Module, ArchitectureSpec]] = {"": (base, base_spec)}
    ids = []
    for recipe in parsed:
        if not recipe.steps:
            ids.append(entry.base)
            progress("fp32", "done")
            continue
        float_steps = [
            s for s in recipe.steps if s.kind not in ("fp16", "int8-dynamic", "int8-static")
        ]
        model, spec = cache[""]
        prefix = ""
        for step in float_steps:
            prefix = f"{prefix}+{step.label}" if prefix else step.label
            if prefix not in cache:
                progress(recipe.label, "transform")
                try:
                    cache[prefix] = apply_float_step(step, model, spec, data, options.seed)
                except RecipeError:
                    raise
                except Exception as exc:  # a library refusing a configuration
                    raise RecipeError(f"{recipe.label}: {step.kind} failed: {exc}") from exc
            model, spec = cache[prefix]
        body, files = make_variant(model, spec, recipe, data, options, recipe.label, progress)
        body["model"] = name
        body["parent"] = entry.base
        body["metrics"]["parent_accuracy"] = round(base_acc, 6)
        progress(recipe.label, "sign")
        variant_id = store.put(body, files)
        store.add_variant(name, variant_id)
        ids.append(variant_id)
        progress(recipe.label, "done")
    return ids


def manifest_summary(bundle: Bundle) -> dict[str, Any]:
    """The flat row the CLI and benchmark print for one variant."""
    m = bundle.manifest
    metrics = m["metrics"]
    return {
        "id": bundle.variant_id,
        "model": m.get("model"),
        "recipe": m["recipe_label"],
        "precision": m["precision"],
        "bytes": metrics["bytes"],
        "gzip_bytes": metrics.get("gzip_bytes"),
        "weight_bytes": metrics["weight_bytes"],
        "params": metrics["params"],
        "macs": metrics["macs"],
        "peak_memory_bytes": metrics["peak_memory_bytes"],
        "accuracy": metrics["accuracy"],
        "latency_ms": metrics["latency_ms"],
        "latency_ms_p95": metrics["latency_ms_p95"],
        "runtimes": metrics["runtimes"],
        "mcu_flash_bytes": (metrics.get("mcu") or {}).get("flash_bytes"),
    }
