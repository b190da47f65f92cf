"""The one JSON writer behind every ``--json``: strict JSON, never ``NaN``.

Python's ``json`` writes ``NaN``/``Infinity`` by default, which ``jq``, JavaScript and most
JSON parsers refuse; a metric nobody measured yet (a rollout's latency, a round's loss) must
reach scripts as ``null`` instead. Kept free of gRPC and torch so every CLI module can use it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps", "print_json", "sanitize"]


def sanitize(data: Any) -> Any:
    """``data`` with every non-finite float replaced by ``None`` (tuples become lists)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {key: sanitize(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [sanitize(value) for value in data]
    return data


def dumps(data: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``data`` (``allow_nan=False`` after :func:`sanitize`)."""
    return json.dumps(sanitize(data), indent=indent, allow_nan=False)


def print_json(data: Any, indent: int | None = 2) -> None:
    """Write ``data`` to stdout as strict JSON, one document followed by a newline."""
    sys.stdout.write(dumps(data, indent) + "\n")
    sys.stdout.flush()
