"""Pareto plots (``models report``): matplotlib PNG + SVG with titles, units, legend and
labels that do not overlap (no torch needed)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from edgefleet.modelops.report import AXES, Point, _figure, pareto_front, write_report

RECIPES = [
    "fp32", "fp16", "int8-dynamic", "int8-static", "prune-unstructured", "prune-channels",
    "distill:width=0.5", "prune-channels+distill:width=0.5+int8-static",
]  # fmt: skip


def _rows() -> list[dict[str, Any]]:
    rows = []
    for k, recipe in enumerate(RECIPES):  # points close together: labels must make room
        rows.append({
            "recipe": recipe, "id": f"{k:016x}", "bytes": 40_000 + 900 * k,
            "weight_bytes": 1, "params": 1, "macs": 1, "peak_memory_bytes": 1,
            "accuracy": 0.95 + 0.0005 * k, "latency_ms": 0.02 + 0.0002 * k, "latency_ms_p95": 0.03,
        })  # fmt: skip
    return rows


def test_report_writes_png_and_svg_with_title_axis_labels_and_units(tmp_path: Path) -> None:
    written = write_report(tmp_path, "digits", _rows())
    assert sorted(p.name for p in written) == [
        "pareto-bytes.png", "pareto-bytes.svg", "pareto-latency.png", "pareto-latency.svg",
        "variants.md",
    ]  # fmt: skip
    for axis in AXES:
        assert (tmp_path / f"{axis.name}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        svg = (tmp_path / f"{axis.name}.svg").read_text()
        assert f"digits: test accuracy vs {axis.what}" in svg  # title, as text
        assert axis.label in svg and "test accuracy (%)" in svg  # axis labels with units
        assert "Pareto frontier" in svg  # legend
        assert "prune-channels+distill:width=0.5+int8-static" in svg  # labels are not cut
    assert "(bytes, log scale)" in AXES[0].label and "(ms," in AXES[1].label


@pytest.mark.parametrize("axis", AXES, ids=[a.name for a in AXES])
def test_point_labels_do_not_overlap_and_stay_in_the_figure(axis: Any) -> None:
    from matplotlib.text import Annotation, Text

    points = [Point(r["recipe"], float(r[axis.key]), r["accuracy"]) for r in _rows()]
    fig = _figure(points, axis, "digits")
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    notes = [c for c in fig.axes[0].get_children() if isinstance(c, Annotation)]
    assert sorted(n.get_text() for n in notes) == sorted(RECIPES)
    boxes = []
    for note in notes:
        note.update_positions(renderer)
        boxes.append(Text.get_window_extent(note, renderer))
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    for box in boxes:
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)


def test_frontier_is_drawn_as_a_line_through_the_front() -> None:
    points = [Point(r["recipe"], float(r["bytes"]), r["accuracy"]) for r in _rows()]
    fig = _figure(points, AXES[0], "digits")
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [p.cost for p in pareto_front(points)]
    assert fig.axes[0].get_xscale() == "log"


def test_no_variants_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no variants to plot"):
        write_report(tmp_path, "digits", [])
