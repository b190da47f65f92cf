"""Export a float network to a small, self-contained ONNX graph for onnxruntime.

The dynamo exporter folds BatchNorm into the convolutions and fuses the graph; we then drop
what a device never needs (per-node source locations, value_info, doc strings) so the file on
disk is the graph plus the weights, and ``bytes`` measures the model, not debug metadata.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import nn

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "export_onnx",
    "quiet_logger",
    "static_shapes",
    "strip_metadata",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 20


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove debug-only metadata in place and return the model."""
    del model.graph.value_info[:]
    del model.metadata_props[:]
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return model


def export_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """Export ``model`` (eval mode, fp32) with a dynamic batch dimension."""
    model = model.eval()
    example = (torch.zeros(1, *input_shape),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # The exporter narrates its progress on stdout and warns about optional torchvision ops;
    # neither belongs in a CLI table or a test log.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
        quiet_logger("torch.onnx"),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    proto = strip_metadata(program.model_proto)
    onnx.checker.check_model(proto)
    return proto


@contextlib.contextmanager
def quiet_logger(logger_name: str) -> Iterator[None]:
    """Raise ``logger_name`` to ERROR for the block: exporters log routine notes as warnings."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes at batch 1 (the graph is exported with a symbolic batch)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for inp in fixed.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    shapes: dict[str, list[int]] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [int(d.dim_value) for d in dims]
    return shapes
