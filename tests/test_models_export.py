"""``edgefleet models export`` and the C source it writes for firmware.

The C files are held to what a firmware build does with them: gcc compiles them with warnings
as errors (as C11, C99 and C++), and a small program linked against them finds the array
16-byte aligned, byte for byte the variant's ``model.tflite``, with the header's constants
equal to the model's own quantisation and to the arena TFLM itself accepts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from edgefleet.agent.runtimes.tflm import measure_arena
from edgefleet.cli.main import app
from edgefleet.modelops.c_export import (
    CExportError,
    c_identifier,
    export_c,
    resolver_method,
    summarize,
    tflm_min_arena,
)
from edgefleet.variant_store import VariantStore
from tests.prereqs import require_binaries
from tests.tflite_models import FLOAT32, BuiltInt8, built_int8_digits, fc_model, repack

runner = CliRunner()


@pytest.fixture(scope="module")
def built() -> BuiltInt8:
    return built_int8_digits()


def _export(built: BuiltInt8, *args: str) -> Any:
    return runner.invoke(
        app,
        ["models", "export", *args, "--data-dir", str(built.data_dir)],
        catch_exceptions=False,
    )


def _macro(header: str, name: str) -> str:
    match = re.search(rf"^#define {name} (.+)$", header, re.M)
    assert match, f"{name} missing from the header"
    return match.group(1).strip()


_MAIN = r"""
#include <stdint.h>
#include <stdio.h>
#include "digits_int8_static_model.h"

int main(int argc, char **argv) {
    static const int shape[] = DIGITS_INT8_STATIC_INPUT_SHAPE;
    if (((uintptr_t)digits_int8_static_model) % 16 != 0) return 2;
    if (digits_int8_static_model_len != DIGITS_INT8_STATIC_MODEL_LEN) return 3;
    if (sizeof(shape) / sizeof(shape[0]) != DIGITS_INT8_STATIC_INPUT_RANK) return 4;
    FILE *f = fopen(argv[argc - 1], "wb");
    if (!f) return 5;
    fwrite(digits_int8_static_model, 1, digits_int8_static_model_len, f);
    fclose(f);
    printf("%u %d %.9g\n", DIGITS_INT8_STATIC_TENSOR_ARENA_SIZE, DIGITS_INT8_STATIC_INPUT_ZERO_POINT,
           (double)DIGITS_INT8_STATIC_INPUT_SCALE);
    return 0;
}
"""


def test_the_c_export_compiles_links_and_holds_the_tflite_byte_for_byte(
    built: BuiltInt8, tmp_path: Path
) -> None:
    require_binaries("gcc")
    res = _export(built, "digits", "int8-static", "--format", "c", "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    names = sorted(Path(f["path"]).name for f in report["files"])
    assert names == ["digits_int8_static_model.c", "digits_int8_static_model.h"]
    assert report["variant"] == built.int8 and report["symbol"] == "digits_int8_static"
    source = tmp_path / "digits_int8_static_model.c"
    for std in ("-std=c11", "-std=c99"):
        subprocess.run(
            [
                "gcc",
                "-c",
                "-Wall",
                "-Wextra",
                "-Werror",
                std,
                str(source),
                "-o",
                str(tmp_path / "m.o"),
            ],
            check=True,
            capture_output=True,
        )
    if shutil.which("g++"):
        subprocess.run(
            [
                "g++",
                "-x",
                "c++",
                "-c",
                "-Wall",
                "-Werror",
                str(source),
                "-o",
                str(tmp_path / "m.o"),
            ],
            check=True,
            capture_output=True,
        )
    (tmp_path / "main.c").write_text(_MAIN)
    exe = tmp_path / "check"
    subprocess.run(
        [
            "gcc",
            "-Wall",
            "-Werror",
            "-I",
            str(tmp_path),
            str(tmp_path / "main.c"),
            str(source),
            "-o",
            str(exe),
        ],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(exe), str(tmp_path / "dump.bin")], capture_output=True, text=True)
    assert out.returncode == 0, f"check program failed with {out.returncode}"
    tflite = VariantStore(built.data_dir).load(built.int8).file("model.tflite")
    assert (tmp_path / "dump.bin").read_bytes() == tflite
    arena, zero_point, scale = out.stdout.split()
    summary = summarize(tflite)
    assert int(zero_point) == summary.input.zero_point
    assert float(scale) == pytest.approx(summary.input.scale, rel=1e-6)
    # The header's arena is TFLM's: the interpreter serves with it, and with 16 bytes less not.
    assert int(arena) == report["arena_bytes"] == -(-tflm_min_arena(tflite) // 16) * 16
    header = (tmp_path / "digits_int8_static_model.h").read_text()
    assert _macro(header, "DIGITS_INT8_STATIC_OP_COUNT") == str(len(summary.ops))
    for op in summary.ops:
        assert f"resolver.{resolver_method(op)}();" in header


def test_tflite_and_onnx_exports_are_the_bundles_files(built: BuiltInt8, tmp_path: Path) -> None:
    bundle = VariantStore(built.data_dir).load(built.int8)
    res = _export(
        built, "digits", built.int8[:10], "--format", "tflite", "--out", str(tmp_path / "a")
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "digits_int8_static.tflite").read_bytes() == bundle.file(
        "model.tflite"
    )
    res = _export(
        built, "digits", "fp32", "--format", "onnx", "--out", str(tmp_path), "--name", "fw"
    )
    assert res.exit_code == 0, res.output
    base = VariantStore(built.data_dir).load(built.base)
    assert (tmp_path / "fw.onnx").read_bytes() == base.file("model.onnx")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch", "int8-static"], r"unknown model 'nosuch'"),
        (
            ["digits", "int9"],
            r"model 'digits' has no variant 'int9' \(give an id prefix or one of: fp32, int8-static\)",
        ),
        (["digits", "fp32", "--format", "tflite"], r"\(fp32\) has no model\.tflite"),
        (["digits", "fp32", "--format", "c"], r"\(fp32\) has no model\.tflite"),
        (["digits", "int8-static", "--out", "FILE"], r"--out .* is a file, not a directory"),
    ],
)
def test_bad_exports_fail_in_one_line(
    built: BuiltInt8, tmp_path: Path, args: list[str], message: str
) -> None:
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    res = _export(built, *[str(a_file) if a == "FILE" else a for a in args])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in res.output


# --- the C writer on models written here -----------------------------------------------------


def test_c_names_and_resolver_methods() -> None:
    assert c_identifier("kws-12 v2") == "kws_12_v2"
    assert c_identifier("8ball") == "m_8ball"
    assert c_identifier("--") == "model"
    assert resolver_method("CONV_2D") == "AddConv2D"
    assert resolver_method("DEPTHWISE_CONV_2D") == "AddDepthwiseConv2D"
    assert resolver_method("FULLY_CONNECTED") == "AddFullyConnected"
    assert resolver_method("MAX_POOL_2D") == "AddMaxPool2D"


def test_c_export_of_a_small_model_and_its_refusals(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = fc_model(
        rng.integers(-127, 128, (10, 64)).astype(np.int8),
        np.zeros(10, np.int32),
        in_q=(0.05, -3),
        w_scale=0.01,
        out_q=(0.5, 2),
        input_shape=[1, 8, 8, 1],
    )
    c = export_c(model, "tiny")
    header = c.files["tiny_model.h"]
    assert _macro(header, "TINY_INPUT_ZERO_POINT") == "(-3)"
    assert _macro(header, "TINY_OUTPUT_SHAPE") == "{1, 10}"
    assert _macro(header, "TINY_INPUT_SIZE") == "64u"
    assert c.summary.ops == ("RESHAPE", "FULLY_CONNECTED")
    arena, _ = measure_arena(model)  # the agent's tflm runtime finds the same arena
    assert c.arena_bytes == -(-arena.arena_bytes // 16) * 16
    with pytest.raises(CExportError, match="not a TFLite flatbuffer"):
        export_c(b"garbage" * 10, "bad")
    with pytest.raises(CExportError, match=r"cannot parse|expected one subgraph"):
        export_c(b"\x00\x00\x00\x00TFL3" + b"\xff" * 40, "bad")


def test_c_export_refuses_what_firmware_io_cannot_describe_or_tflm_cannot_prepare() -> None:
    rng = np.random.default_rng(1)
    w, b = rng.integers(-127, 128, (4, 16)).astype(np.int8), np.zeros(4, np.int32)
    model = fc_model(w, b, in_q=(0.1, 0), w_scale=0.01, out_q=(0.5, 0))

    def per_channel_input(m: Any) -> None:
        q = m.subgraphs[0].tensors[m.subgraphs[0].inputs[0]].quantization
        q.scale, q.zeroPoint = [0.1, 0.2], [0, 0]

    def two_outputs(m: Any) -> None:
        m.subgraphs[0].outputs = [3, 0]

    with pytest.raises(CExportError, match="not per-tensor quantised"):
        export_c(repack(model, per_channel_input), "bad")
    with pytest.raises(CExportError, match="expected one input and one output"):
        export_c(repack(model, two_outputs), "bad")
    inconsistent = fc_model(
        w, b, in_q=(0.1, 0), w_scale=0.01, out_q=(0.5, 0), input_shape=[1, 16], input_type=FLOAT32
    )
    with pytest.raises(CExportError, match="TFLM cannot prepare the model"):
        tflm_min_arena(inconsistent)
