"""Trade-off reports: the Pareto frontier, labelled plots (PNG and SVG), a Markdown table.

No torch here (the CLI imports this module to draw). Plots are matplotlib on the Agg canvas
(no display, no pyplot global state): a title, axis labels with units, every variant
labelled without overlapping its neighbours, the frontier as a line, and a legend. The SVG
keeps text as text, so labels stay searchable and sharp at any zoom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation
    from matplotlib.transforms import Bbox

__all__ = ["Point", "markdown_table", "pareto_front", "terminal_plot", "write_report"]


@dataclass(frozen=True)
class Point:
    label: str
    cost: float  # smaller is better (bytes, latency)
    accuracy: float  # larger is better


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both cost and accuracy, sorted by cost."""
    front: list[Point] = []
    best = -math.inf
    for p in sorted(points, key=lambda p: (p.cost, -p.accuracy)):
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| recipe | id | bytes | weight bytes | params | MACs | peak mem | accuracy | ms p50 | ms p95 |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['id'][:12]} | {r['bytes']} | {r['weight_bytes']} | "
            f"{r['params']} | {r['macs']} | {r['peak_memory_bytes']} | "
            f"{100 * r['accuracy']:.2f}% | {r['latency_ms']:.4f} | {r['latency_ms_p95']:.4f} |"
        )
    return "\n".join(lines) + "\n"


# --- plotting -------------------------------------------------------------------------------

_FRONT, _OTHER = "#dc3c28", "#285ac8"
#: where a point's label may go, in points from the point (tried in order until one is free)
_OFFSETS = [(dx, dy) for dy in (6, -6, 18, -18, 30, -30, 42, -42, 54, -54) for dx in (8, -8)]


@dataclass(frozen=True)
class Axis:
    """One plot: which metric is the cost, how it is labelled, and its scale."""

    key: str  # the row field (bytes, latency_ms)
    name: str  # file name stem
    what: str  # for the title
    label: str  # x axis, with its unit
    log: bool


AXES = (
    Axis("bytes", "pareto-bytes", "model size", "model size on disk (bytes, log scale)", True),
    Axis(
        "latency_ms",
        "pareto-latency",
        "latency",
        "latency p50 (ms, batch 1, 1 thread, onnxruntime)",
        False,
    ),
)


def _label(ax: Axes, p: Point, dx: int, dy: int, leader: bool) -> Annotation:
    return ax.annotate(
        p.label,
        (p.cost, p.accuracy),
        xytext=(dx, dy),
        textcoords="offset points",
        ha="left" if dx > 0 else "right",
        va="bottom" if dy > 0 else "top",
        fontsize=8,
        annotation_clip=False,
        zorder=5,  # above the frontier line, on a white backing so the line does not cross it
        bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8},
        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if leader else None,
    )


def _text_box(note: Annotation, renderer: RendererBase) -> Bbox:
    """The label's own extent (an Annotation's would include its leader line)."""
    from matplotlib.text import Text

    note.update_positions(renderer)  # offsets in points are applied at draw time otherwise
    return Text.get_window_extent(note, renderer).expanded(1.04, 1.2)


def _least_crowded(ax: Axes, p: Point, taken: Sequence[Bbox], renderer: RendererBase) -> Annotation:
    def crowding(k: int) -> float:
        note = _label(ax, p, *_OFFSETS[k], leader=k >= 2)
        box = _text_box(note, renderer)
        note.remove()
        return sum(_intersection(box, other) for other in taken)

    best = min(range(len(_OFFSETS)), key=crowding)
    return _label(ax, p, *_OFFSETS[best], leader=best >= 2)


def _intersection(a: Bbox, b: Bbox) -> float:
    w = float(min(a.x1, b.x1) - max(a.x0, b.x0))
    h = float(min(a.y1, b.y1) - max(a.y0, b.y0))
    return max(0.0, w) * max(0.0, h)


def _place_labels(fig: Figure, ax: Axes, points: Sequence[Point]) -> None:
    """Label every point, full text, where it overlaps no other label, marker or the legend
    and stays inside the figure; a label that had to move away gets a leader line."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    taken: list[Bbox] = []
    for p in points:
        x, y = ax.transData.transform((p.cost, p.accuracy))
        taken.append(Bbox.from_bounds(x - 5, y - 5, 10, 10))
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    for p in sorted(points, key=lambda q: (q.cost, -q.accuracy)):
        chosen = None
        for k, (dx, dy) in enumerate(_OFFSETS):
            note = _label(ax, p, dx, dy, leader=k >= 2)
            box = _text_box(note, renderer)
            inside = fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
            if inside and not any(box.overlaps(other) for other in taken):
                chosen = note
                break
            note.remove()
        if chosen is None:  # nowhere free (a very crowded plot): the least crowded spot
            chosen = _least_crowded(ax, p, taken, renderer)
        taken.append(_text_box(chosen, renderer))


def _figure(points: Sequence[Point], axis: Axis, model: str) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter, PercentFormatter

    fig = Figure(figsize=(9, 5.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    front = pareto_front(points)
    on_front = {id(p) for p in front}
    rest = [p for p in points if id(p) not in on_front]
    ax.scatter(
        [p.cost for p in rest],
        [p.accuracy for p in rest],
        color=_OTHER,
        zorder=3,
        label="variant (dominated)",
    )
    ax.plot(
        [p.cost for p in front],
        [p.accuracy for p in front],
        color=_FRONT,
        marker="o",
        zorder=4,
        label="Pareto frontier (nothing is both cheaper and more accurate)",
    )
    if axis.log:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel(axis.label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{model}: test accuracy vs {axis.what}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.canvas.draw()  # the layout must exist before labels can be measured
    _place_labels(fig, ax, points)
    return fig


def write_report(out: Path, model: str, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """Write both Pareto plots (PNG + SVG) and the table (Markdown); return the paths."""
    from matplotlib import rc_context

    if not rows:
        raise ValueError(f"model {model!r} has no variants to plot")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for axis in AXES:
        points = [Point(str(r["recipe"]), float(r[axis.key]), float(r["accuracy"])) for r in rows]
        with rc_context({"svg.fonttype": "none", "svg.hashsalt": "edgefleet"}):
            fig = _figure(points, axis, model)
            for suffix in (".png", ".svg"):
                path = out / (axis.name + suffix)
                fig.savefig(
                    path, format=suffix[1:], metadata={"Date": None} if suffix == ".svg" else None
                )
                written.append(path)
    table = out / "variants.md"
    table.write_text(f"# {model}: variants\n\n" + markdown_table(rows), encoding="utf-8")
    written.append(table)
    return written


def terminal_plot(points: Sequence[Point], width: int = 60, height: int = 16) -> str:
    """A Unicode scatter (x: cost, log scale; y: accuracy) for terminals; frontier as ``●``."""
    if not points:
        return ""
    xs = [math.log10(max(p.cost, 1e-12)) for p in points]
    ys = [p.accuracy for p in points]
    x0, x1 = min(xs), max(xs) or 1.0
    y0, y1 = min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    front = {id(p) for p in pareto_front(points)}
    for p, x, y in zip(points, xs, ys, strict=True):
        col = 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (width - 1))
        row = 0 if y1 == y0 else round((y1 - y) / (y1 - y0) * (height - 1))
        grid[row][col] = "●" if id(p) in front else "○"
    lines = [f"{100 * y1:6.2f}% ┤" + "".join(grid[0])]
    lines += ["        │" + "".join(r) for r in grid[1:-1]]
    lines.append(f"{100 * y0:6.2f}% ┤" + "".join(grid[-1]))
    lines.append("        └" + "─" * width)
    lines.append(f"         {10**x0:.4g}{' ' * (width - 20)}{10**x1:.4g}")
    return "\n".join(lines)
