"""The house's layout holds: one import namespace, the packages pyproject installs are the folders
that exist, the layering contracts hold (and fail on a forbidden import), no import circles, and
no module grows past ~500 lines without saying why."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parent.parent
#: the namespace's three folders: shared code, the agent, the coordinator side
ROOTS = (REPO, REPO / "agent", REPO / "coordinator")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
MAX_LINES = 500


def _namespace_env(*roots: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(str(r) for r in roots)}


def _packages_on_disk() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in ROOTS:
        base = root / "edgefleet"
        for init in base.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            pkg = ".".join(init.parent.relative_to(root).parts)
            found[pkg] = init.parent
    found["edgefleet"] = REPO / "edgefleet"
    return found


def test_edgefleet_is_a_namespace_over_three_folders() -> None:
    assert not (REPO / "edgefleet" / "__init__.py").exists()
    for root in ROOTS[1:]:
        assert not (root / "edgefleet" / "__init__.py").exists(), root
    for old in ("coordinator", "agent"):  # no top-level import package of these names
        assert not (REPO / old / "__init__.py").exists()


def test_pyproject_installs_exactly_the_packages_on_disk() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    on_disk = _packages_on_disk()
    assert sorted(setuptools["packages"]) == sorted(on_disk)
    for pkg, folder in setuptools["package-dir"].items():
        assert (REPO / folder).resolve() == on_disk[pkg].resolve(), pkg


def test_the_wheel_holds_only_the_edgefleet_namespace(tmp_path: Path) -> None:
    # built from a copy: setuptools writes build/ and *.egg-info into the source tree
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("edgefleet", "agent", "coordinator"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("edgefleet-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"edgefleet"}
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("edgefleet/agent/main.py", "edgefleet/coordinator/server.py",
                   "edgefleet/cli/main.py", "edgefleet/bundle.py", "edgefleet/v1/admin_pb2.py"):  # fmt: skip
        assert module in names, module


def test_the_shared_module_list_in_the_contracts_is_whole() -> None:
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    (shared,) = [c for c in contracts if c["name"] == "Shared code imports neither side"]
    on_disk = {
        f"edgefleet.{p.stem}"
        for p in (REPO / "edgefleet").iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists()) and p.name != "__pycache__"
    }
    assert set(shared["source_modules"]) == on_disk


def test_no_import_circles() -> None:
    env_paths = [str(r) for r in ROOTS]
    sys.path[:0] = [p for p in env_paths if p not in sys.path]
    graph = grimp.build_graph("edgefleet")
    circles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                circles.add(tuple(sorted((module, imported))))
    assert not circles, sorted(circles)


def _module_docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def test_long_modules_say_why_they_are_long() -> None:
    """Over ~500 lines, a module's docstring carries a ``Size:`` paragraph saying why."""
    unexplained = []
    for root in ROOTS:
        for path in (root / "edgefleet").rglob("*.py"):
            if "v1" in path.relative_to(root).parts or "__pycache__" in path.parts:
                continue  # generated stubs
            lines = path.read_text().count("\n")
            if lines > MAX_LINES and "Size:" not in _module_docstring(path):
                unexplained.append(f"{path.relative_to(REPO)} ({lines} lines)")
    assert not unexplained, unexplained


@pytest.mark.timeout(300)
def test_the_contracts_hold_and_fail_on_a_forbidden_import(tmp_path: Path) -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is in the dev lock"
    ok = subprocess.run(
        [lint, "--no-cache"], cwd=REPO, env=_namespace_env(*ROOTS),
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout[-3000:]
    # the same tree with one forbidden arrow: the agent importing the coordinator's state
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("edgefleet", "agent", "coordinator"):
        shutil.copytree(REPO / name, copy / name, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    victim = copy / "agent" / "edgefleet" / "agent" / "backoff.py"
    victim.write_text(victim.read_text() + "\nimport edgefleet.coordinator.state.store  # noqa\n")
    roots = (copy, copy / "agent", copy / "coordinator")
    bad = subprocess.run(
        [lint, "--no-cache"], cwd=copy, env=_namespace_env(*roots),
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "edgefleet.agent.backoff -> edgefleet.coordinator.state.store" in bad.stdout
