"""The architecture a ``models add`` names, checked against its data: one function for the
local verb and the upload over the API, so both refuse the same things with the same line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.modelops.data import Dataset
    from edgefleet.zoo import ArchitectureSpec

__all__ = ["architecture_spec"]


def architecture_spec(
    arch: str,
    *,
    import_path: str | None,
    checkpoint: Path | None,
    config: str,
    width: float,
    data: Dataset,
) -> ArchitectureSpec:
    """``--arch`` (a zoo name, or ``custom`` with its factory, JSON kwargs and checkpoint)
    as a spec for ``data``'s input and classes; ArchitectureError/DatasetError otherwise."""
    from edgefleet.modelops.data import DatasetError
    from edgefleet.zoo import ArchitectureError, ArchitectureSpec, InputShapeError

    if arch == "custom":
        if not import_path:
            raise ArchitectureError("--arch custom needs --import-path package.module:Factory")
        if checkpoint is None:
            raise ArchitectureError("--arch custom needs --checkpoint (we do not train it)")
        try:
            kwargs: dict[str, Any] = json.loads(config)
        except json.JSONDecodeError as exc:
            raise ArchitectureError(f"--config is not JSON: {exc}") from exc
        return ArchitectureSpec.custom(import_path, kwargs, data.input_shape)
    try:
        return ArchitectureSpec.zoo(
            arch, width=width, num_classes=data.num_classes, input_shape=data.input_shape
        )
    except InputShapeError as exc:
        raise DatasetError(
            f"{arch} does not take dataset {data.name} input {data.input_shape}: {exc}"
        ) from exc
