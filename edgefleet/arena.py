"""The one greedy activation-arena planner, shared by model ops and the ``mcu-sim`` runtime.

Weights live in flash; activations live in one RAM arena whose size an embedded runtime fixes
at start-up. We size it the way TensorFlow Lite Micro's greedy planner does: every tensor gets
a lifetime (from the step that writes it to the last step that reads it), tensors are placed
largest-first at the lowest offset that collides with no tensor alive at the same time, and
the arena is the highest end offset. The lower bound (the largest sum of simultaneously-live
tensors) is reported too, so the planner's waste is visible.

Why one module: the coordinator plans a float ONNX graph before it ships a variant
(:mod:`edgefleet.modelops.memplan`) and the MCU emulator plans the int8 graph it loads
(:mod:`edgefleet.agent.runtimes.mcu_sim`); both must agree on the algorithm, so both feed
their graphs' lifetimes through :class:`Lifetimes` here. Pure Python: no numpy, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["ArenaPlan", "Buffer", "Lifetimes"]


class Buffer(NamedTuple):
    """One placed tensor (a tuple too: ``name, size, first, last, offset``)."""

    name: str
    size: int
    first: int
    last: int
    offset: int


@dataclass(frozen=True)
class ArenaPlan:
    """The arena a runtime must reserve: ``arena_bytes`` (greedy plan) >= ``lower_bound_bytes``."""

    arena_bytes: int
    lower_bound_bytes: int
    buffers: tuple[Buffer, ...]  # ordered by first use


@dataclass
class Lifetimes:
    """Tensor lifetimes over a graph's steps (ops), built in execution order.

    A tensor computed in place (a shape-only op, or an element-wise op on a tensor nothing else
    reads) is an :meth:`alias` of its source: it lives in the source's buffer and extends it.
    """

    first: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    _root: dict[str, str] = field(default_factory=dict)

    def owner(self, name: str) -> str:
        """The buffer ``name`` lives in (itself unless it is an alias)."""
        while name in self._root:
            name = self._root[name]
        return name

    def define(self, name: str, step: int, size: int) -> None:
        """``name`` (``size`` bytes) is written at ``step``."""
        self.first[name] = self.last[name] = step
        self.sizes[name] = size

    def alias(self, name: str, source: str) -> None:
        """``name`` is computed in place in ``source``'s buffer."""
        self._root[name] = self.owner(source)

    def read(self, name: str, step: int) -> None:
        """``name`` is read at ``step``: its buffer lives at least until then."""
        buf = self.owner(name)
        self.last[buf] = max(self.last.get(buf, step), step)

    def keep_until(self, name: str, step: int) -> None:
        """``name``'s buffer lives until ``step`` (a graph output, until the end)."""
        self.last[self.owner(name)] = step

    def plan(self, steps: int, align: int = 1) -> ArenaPlan:
        """Greedy placement (largest first, then earliest, then by name) over ``steps`` ops.

        Each buffer's size is rounded up to ``align`` bytes (TFLM aligns to 16).
        """
        placed: list[Buffer] = []
        for name in sorted(self.first, key=lambda n: (-self.sizes[n], self.first[n], n)):
            lo, hi = self.first[name], self.last[name]
            size = -(-self.sizes[name] // align) * align
            offset = 0
            clashes = sorted(
                (b for b in placed if b.first <= hi and lo <= b.last), key=lambda b: b.offset
            )
            for b in clashes:
                if offset + size <= b.offset:
                    break
                offset = max(offset, b.offset + b.size)
            placed.append(Buffer(name, size, lo, hi, offset))
        arena = max((b.offset + b.size for b in placed), default=0)
        bound = max(
            (sum(b.size for b in placed if b.first <= t <= b.last) for t in range(steps + 1)),
            default=0,
        )
        return ArenaPlan(arena, bound, tuple(sorted(placed, key=lambda b: b.first)))
