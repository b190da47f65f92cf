"""Trade-off reports: the Pareto frontier, plots as PNG (and SVG), and a Markdown table.

No torch here (the CLI imports it to draw). Plots use matplotlib when it is installed; without
it we still write a real PNG, rasterised with the standard library (zlib + the PNG chunk
format, a 3x5 bitmap font for ticks and labels), plus an SVG of the same plot whose text
scales properly.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_Map = Callable[[float], float]

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

_W, _H, _M = 640, 420, 48

# A 3x5 pixel font (rows top to bottom, 3 bits each) so the stdlib PNG can carry tick values
# and recipe labels; letters are drawn as capitals.
_FONT = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001010010",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    "%": "101001010100101",
    "-": "000000111000000",
    "+": "000010111010000",
    ":": "000010000010000",
    "=": "000111000111000",
    "_": "000000000000111",
    " ": "000000000000000",
    "a": "010101111101101",
    "b": "110101110101110",
    "c": "011100100100011",
    "d": "110101101101110",
    "e": "111100110100111",
    "f": "111100110100100",
    "g": "011100101101011",
    "h": "101101111101101",
    "i": "111010010010111",
    "j": "001001001101010",
    "k": "101101110101101",
    "l": "100100100100111",
    "m": "101111111101101",
    "n": "110101101101101",
    "o": "010101101101010",
    "p": "110101110100100",
    "q": "010101101110011",
    "r": "110101110101101",
    "s": "011100010001110",
    "t": "111010010010010",
    "u": "101101101101111",
    "v": "101101101101010",
    "w": "101101111111101",
    "x": "101101010101101",
    "y": "101101010010010",
    "z": "111001010100111",
}


def _scale(points: Sequence[Point], log_x: bool) -> tuple[_Map, _Map]:
    xs = [math.log10(p.cost) if log_x else p.cost for p in points]
    ys = [p.accuracy for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    x0, x1 = (x0 - 0.5, x1 + 0.5) if x0 == x1 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 0.01, y1 + 0.01) if y0 == y1 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))

    def fx(c: float) -> float:
        v = math.log10(c) if log_x else c
        return _M + (v - x0) / (x1 - x0) * (_W - 2 * _M)

    def fy(a: float) -> float:
        return _H - _M - (a - y0) / (y1 - y0) * (_H - 2 * _M)

    return fx, fy


def _inverse(points: Sequence[Point], log_x: bool) -> tuple[_Map, _Map]:
    """Pixel -> (cost, accuracy), for tick labels."""
    fx, fy = _scale(points, log_x)
    ax0, ax1 = fx(min(p.cost for p in points)), fx(max(p.cost for p in points))
    ay0, ay1 = fy(min(p.accuracy for p in points)), fy(max(p.accuracy for p in points))
    c0, c1 = min(p.cost for p in points), max(p.cost for p in points)
    a0, a1 = min(p.accuracy for p in points), max(p.accuracy for p in points)

    def cost(px: float) -> float:
        if ax1 == ax0:
            return c0
        t = (px - ax0) / (ax1 - ax0)
        if log_x:
            return float(10 ** (math.log10(c0) + t * (math.log10(c1) - math.log10(c0))))
        return c0 + t * (c1 - c0)

    def acc(py: float) -> float:
        return a0 if ay1 == ay0 else a0 + (py - ay0) / (ay1 - ay0) * (a1 - a0)

    return cost, acc


def _png(points: Sequence[Point], log_x: bool) -> bytes:
    """A scatter plot as PNG bytes, using only zlib and struct (3x5 bitmap font for text)."""
    px = bytearray(b"\xff" * (_W * _H * 3))

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < _W and 0 <= y < _H:
            i = (y * _W + x) * 3
            px[i : i + 3] = bytes(rgb)

    def line(x0: float, y0: float, x1: float, y1: float, rgb: tuple[int, int, int]) -> None:
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        for k in range(n + 1):
            t = k / n
            put(round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0)), rgb)

    for k in range(1, 5):  # grid
        gx = _M + k * (_W - 2 * _M) / 5
        gy = _M + k * (_H - 2 * _M) / 5
        line(gx, _M, gx, _H - _M, (230, 230, 230))
        line(_M, gy, _W - _M, gy, (230, 230, 230))
    line(_M, _H - _M, _W - _M, _H - _M, (0, 0, 0))
    line(_M, _M, _M, _H - _M, (0, 0, 0))
    fx, fy = _scale(points, log_x)
    front = pareto_front(points)
    for a, b in itertools.pairwise(front):
        line(fx(a.cost), fy(a.accuracy), fx(b.cost), fy(b.accuracy), (220, 60, 40))
    on_front = {id(p) for p in front}
    for p in points:
        cx, cy = round(fx(p.cost)), round(fy(p.accuracy))
        rgb = (220, 60, 40) if id(p) in on_front else (40, 90, 200)
        for dx in range(-4, 5):
            for dy in range(-4, 5):
                if dx * dx + dy * dy <= 16:
                    put(cx + dx, cy + dy, rgb)

    def text(x: int, y: int, label: str, rgb: tuple[int, int, int], scale: int = 2) -> None:
        for k, ch in enumerate(label.lower()):
            bits = _FONT.get(ch, _FONT["_"])
            for bit, on in enumerate(bits):
                if on == "1":
                    gx, gy = x + k * 4 * scale + (bit % 3) * scale, y + (bit // 3) * scale
                    for sx in range(scale):
                        for sy in range(scale):
                            put(gx + sx, gy + sy, rgb)

    inv_y = _inverse(points, log_x)
    for k in range(6):
        gy = _M + k * (_H - 2 * _M) / 5
        text(2, round(gy) - 5, f"{100 * inv_y[1](gy):.1f}%", (60, 60, 60))
        gx = _M + k * (_W - 2 * _M) / 5
        text(round(gx) - 16, _H - _M + 8, f"{inv_y[0](gx):.3g}", (60, 60, 60))
    for p in points:
        cx, cy = round(fx(p.cost)), round(fy(p.accuracy))
        text(cx + 6, cy - 12, p.label[:28], (90, 90, 90), scale=1)
    raw = b"".join(b"\x00" + bytes(px[y * _W * 3 : (y + 1) * _W * 3]) for y in range(_H))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", _W, _H, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _svg(points: Sequence[Point], log_x: bool, x_label: str, title: str) -> str:
    fx, fy = _scale(points, log_x)
    front = pareto_front(points)
    on_front = {id(p) for p in front}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" '
        'font-family="sans-serif" font-size="10">',
        f'<rect width="{_W}" height="{_H}" fill="white"/>',
        f'<text x="{_W / 2}" y="20" text-anchor="middle" font-size="13">{_esc(title)}</text>',
        f'<line x1="{_M}" y1="{_H - _M}" x2="{_W - _M}" y2="{_H - _M}" stroke="black"/>',
        f'<line x1="{_M}" y1="{_M}" x2="{_M}" y2="{_H - _M}" stroke="black"/>',
        f'<text x="{_W / 2}" y="{_H - 12}" text-anchor="middle">{_esc(x_label)}</text>',
        f'<text x="14" y="{_H / 2}" transform="rotate(-90 14 {_H / 2})" '
        'text-anchor="middle">test accuracy</text>',
    ]
    path = " ".join(f"{fx(p.cost):.1f},{fy(p.accuracy):.1f}" for p in front)
    parts.append(f'<polyline points="{path}" fill="none" stroke="#dc3c28"/>')
    for p in points:
        colour = "#dc3c28" if id(p) in on_front else "#285ac8"
        x, y = fx(p.cost), fy(p.accuracy)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}"/>')
        parts.append(
            f'<text x="{x + 6:.1f}" y="{y - 6:.1f}">{_esc(p.label)} '
            f"({100 * p.accuracy:.1f}%, {p.cost:.4g})</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _matplotlib_png(points: Sequence[Point], log_x: bool, x_label: str, title: str) -> bytes | None:
    try:
        import io

        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([p.cost for p in points], [p.accuracy for p in points], color="#285ac8")
    ax.plot([p.cost for p in front], [p.accuracy for p in front], color="#dc3c28", marker="o")
    for p in points:
        ax.annotate(
            p.label, (p.cost, p.accuracy), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def write_report(out: Path, model: str, rows: Sequence[dict[str, Any]]) -> list[Path]:
    """Write both Pareto plots (PNG + SVG) and the table (Markdown); return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for key, x_label, log_x in (
        ("bytes", "model bytes on disk (log scale)", True),
        ("latency_ms", "latency ms, p50, batch 1, 1 thread", False),
    ):
        points = [Point(str(r["recipe"]), float(r[key]), float(r["accuracy"])) for r in rows]
        title = f"{model}: accuracy vs {key}"
        png = _matplotlib_png(points, log_x, x_label, title) or _png(points, log_x)
        name = f"pareto-{key.replace('_ms', '')}"
        for suffix, data in ((".png", png), (".svg", _svg(points, log_x, x_label, title).encode())):
            path = out / (name + suffix)
            path.write_bytes(data)
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
