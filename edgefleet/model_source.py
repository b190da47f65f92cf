"""A custom model's module source, kept with the model so rebuilds need no ``PYTHONPATH``.

Why the source text and not a pickle: the text is what the user wrote and can review, it is
signed into every bundle's manifest like the rest of the architecture, and a rebuild runs
exactly the code that was registered even if the user's file later changes or is gone. One
file only: a module importing other modules of the user's own (a relative import, or a file
found under the same ``sys.path`` root) is refused, because those would not be stored;
installed packages (torch, numpy, ...) are imported as usual.

Standard library only, so it can live in the light shared package; :mod:`edgefleet.zoo`
turns :class:`ModelSourceError` into its ``ArchitectureError``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
import types
from pathlib import Path

__all__ = ["ModelSourceError", "module_from_source", "read_source"]


class ModelSourceError(ValueError):
    """A module whose source cannot be stored, or stored source that does not run."""


def read_source(module_name: str) -> str:
    """The text of the already imported module ``module_name``, checked to stand alone."""
    module = sys.modules[module_name]
    try:
        path = Path(inspect.getsourcefile(module) or "")
    except TypeError:  # a built-in module
        path = Path()
    if path.suffix != ".py" or not path.is_file():
        raise ModelSourceError(
            f"{module_name!r} has no Python source file to store with the model "
            "(a compiled or built-in module); put the factory in a .py file"
        )
    text = path.read_text(encoding="utf-8")
    root = path.parents[module_name.count(".")]
    own = _own_imports(text, root, path)
    if own:
        raise ModelSourceError(
            f"{path.name} imports {own[0]!r} from your own code, which would not be stored "
            "with the model; put the model in one module (installed packages are fine)"
        )
    return text


def _own_imports(text: str, root: Path, path: Path) -> list[str]:
    """Modules ``text`` imports that are relative, or are files under ``root`` (the user's)."""
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise ModelSourceError(f"{path.name}: {exc}") from exc
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                return [f"{'.' * node.level}{node.module or ''}"]
            names.append(node.module or "")
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    own = []
    for name in names:
        try:
            found = importlib.util.find_spec(name.partition(".")[0])
        except (ImportError, ValueError):
            continue
        origin = Path(found.origin).resolve() if found and found.origin else None
        if origin is None or origin == path.resolve() or _installed(origin):
            continue
        if origin.is_relative_to(root.resolve()):
            own.append(name)
    return own


def _installed(origin: Path) -> bool:
    """Part of an installation (a venv inside the user's project counts as installed)."""
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return any(origin.is_relative_to(p) for p in prefixes) or bool(
        {"site-packages", "dist-packages"} & set(origin.parts)
    )


def module_from_source(module_name: str, text: str) -> types.ModuleType:
    """Stored ``text`` of ``module_name`` run as a private module (once per process and text).

    Trust: the text comes from the model index or a bundle whose signature was verified, and
    it is the code the user's own import ran at registration. The private name keeps it from
    shadowing, or being shadowed by, a module of the same name on ``sys.path``.
    """
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    private = f"_edgefleet_model_{digest}"
    module = sys.modules.get(private)
    if module is not None:
        return module
    module = types.ModuleType(private)
    module.__file__ = f"<{module_name} as stored with the model>"
    sys.modules[private] = module  # dataclasses and typing look their module up by name
    try:
        exec(compile(text, module.__file__, "exec"), module.__dict__)
    except Exception as exc:
        del sys.modules[private]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelSourceError(
            f"the stored source of {module_name!r} fails to run: {type(exc).__name__}: {first}"
        ) from exc
    return module
