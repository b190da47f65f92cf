"""The global model on the server side: zoo configs per width, initial weights, scoring.

Torch is imported lazily: the ServerApp process pays it once per run, not per round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Arrays",
    "arch_config",
    "initial_params",
    "load_params",
    "save_params",
    "score",
    "shapes",
]

Arrays = dict[str, npt.NDArray[np.float32]]
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10


def arch_config(arch: str, width: float, override: str = "") -> dict[str, Any]:
    """The zoo's default config for ``arch`` at ``width`` (digits input, 10 classes).

    ``override`` (JSON) replaces the default full-width config; for an ``mlp`` its hidden
    sizes are then scaled by ``width`` the same way the zoo scales its defaults.
    """
    from edgefleet.zoo import ARCHITECTURES

    if override:
        cfg: dict[str, Any] = json.loads(override)
        if width != 1.0:
            if arch != "mlp":
                raise ValueError("an arch-config override can be width-scaled for mlp only")
            cfg["hidden"] = [max(4, round(h * width)) for h in cfg["hidden"]]
        return cfg
    entry = ARCHITECTURES[arch]
    third = 64 if entry.flat_input else INPUT_SHAPE[0]
    return dict(entry.default_config(width, NUM_CLASSES, third))


def _build(arch: str, config: dict[str, Any]) -> Any:
    from edgefleet.zoo import ArchitectureSpec, build_model

    return build_model(ArchitectureSpec(name=arch, config=config, input_shape=INPUT_SHAPE))


def shapes(arch: str, width: float, override: str = "") -> dict[str, tuple[int, ...]]:
    """Tensor shapes of ``arch`` at ``width`` (what a width-``w`` client holds)."""
    model = _build(arch, arch_config(arch, width, override))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def initial_params(arch: str, width: float = 1.0, seed: int = 0, override: str = "") -> Arrays:
    """Fresh seeded weights of the full-width model."""
    import torch

    torch.manual_seed(seed)
    model = _build(arch, arch_config(arch, width, override))
    return {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}


def save_params(params: Arrays, path: Path) -> Path:
    """Weights as one ``.npz`` (names kept in order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    named = {f"{i:04d}|{k}": v for i, (k, v) in enumerate(params.items())}
    np.savez(path, **named)  # type: ignore[arg-type]
    return path


def load_params(path: str | Path) -> Arrays:
    """Read weights written by :func:`save_params` (state-dict order restored)."""
    with np.load(path) as z:
        items = sorted(z.files)
        return {name.split("|", 1)[1]: z[name].astype(np.float32) for name in items}


def score(
    arch: str,
    params: Arrays,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    override: str = "",
) -> tuple[float, float]:
    """Loss and accuracy of the global model on ``(x, y)`` (``override``: its full config)."""
    if arch == "mlp":
        from edgefleet.fl import mlp_numpy

        return mlp_numpy.evaluate(params, x, y)
    import torch

    model = _build(arch, arch_config(arch, 1.0, override))
    ref = model.state_dict()
    model.load_state_dict(
        {k: torch.from_numpy(np.array(v)).to(ref[k].dtype) for k, v in params.items()}
    )
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        t = torch.from_numpy(y)
        return float(torch.nn.functional.cross_entropy(logits, t)), float(
            (logits.argmax(1) == t).float().mean()
        )
