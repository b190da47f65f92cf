"""``edgefleet models``: JSON for scripts, one clear error line for every mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli.models import models_app
from edgefleet.variant_store import VariantStore

from .conftest import MODEL, BuiltModel

runner = CliRunner()


def _invoke(store: VariantStore, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(models_app, [*args, "--data-dir", str(store.root)])
    return result.exit_code, result.stdout, result.stderr


def test_variants_json_has_the_documented_fields(built: BuiltModel) -> None:
    code, out, _ = _invoke(built.store, "variants", MODEL, "--json")
    assert code == 0
    rows = json.loads(out)
    assert rows[0]["recipe"] == "fp32" and rows[0]["id"] == built.base
    for row in rows:
        for key in ("id", "recipe", "bytes", "accuracy", "latency_ms", "peak_memory_bytes", "macs"):
            assert key in row
        assert 0.0 < row["accuracy"] <= 1.0 and row["bytes"] > 0 and row["latency_ms"] > 0


def test_ls_and_show(built: BuiltModel) -> None:
    code, out, _ = _invoke(built.store, "ls", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)] == [MODEL]
    code, out, _ = _invoke(built.store, "show", built.ids["int8"][:10])
    assert code == 0
    assert json.loads(out)["recipe_label"] == "int8-static"


def test_report_writes_png_svg_and_table(built: BuiltModel, tmp_path: Path) -> None:
    code, out, _ = _invoke(built.store, "report", MODEL, "--out", str(tmp_path))
    assert code == 0, out
    png = (tmp_path / "pareto-bytes.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 500
    assert (tmp_path / "pareto-latency.png").exists()
    assert "int8-static" in (tmp_path / "variants.md").read_text()
    svg = (tmp_path / "pareto-bytes.svg").read_text()
    assert "int8-static" in svg and f"{MODEL}: test accuracy vs model size" in svg
    assert "model size on disk (bytes, log scale)" in svg and "test accuracy (%)" in svg


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("variants", "no-such-model"), "unknown model 'no-such-model'"),
        (("add", "other", "--arch", "transformer-xl"), "unknown architecture 'transformer-xl'"),
        (("add", MODEL), "already exists"),
        (("show", "ffffffffff"), "unknown variant"),
    ],
)
def test_errors_are_one_line_without_traceback(
    built: BuiltModel, args: tuple[str, ...], message: str
) -> None:
    code, out, err = _invoke(built.store, *args)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


@pytest.mark.parametrize(
    ("recipes", "message"),
    [
        ("int8-static,teleport", "unknown recipe step 'teleport'"),
        ("prune-unstructured:sparsity=1.2", "impossible"),
    ],
)
def test_malformed_recipes_are_usage_errors(built: BuiltModel, recipes: str, message: str) -> None:
    code, out, err = _invoke(built.store, "build", MODEL, "--recipes", recipes)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out


def test_mismatched_checkpoint_is_a_clear_error(built: BuiltModel, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from edgefleet.zoo import ArchitectureSpec, build_model

    ckpt = tmp_path / "mlp.safetensors"
    save_file(build_model(ArchitectureSpec.zoo("mlp")).state_dict(), str(ckpt))
    code, _, err = _invoke(
        built.store, "add", "wrong", "--arch", "ds-cnn", "--checkpoint", str(ckpt)
    )
    assert code == 1 and "checkpoint does not match architecture" in err


def test_corrupt_bundle_is_refused_by_the_cli(store_copy: VariantStore, built: BuiltModel) -> None:
    weights = store_copy.variants_dir / built.base / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    code, _, err = _invoke(store_copy, "variants", MODEL)
    assert code == 1 and "truncated" in err and "Traceback" not in err


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, edgefleet.cli.models; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
