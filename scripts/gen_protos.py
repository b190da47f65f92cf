"""Regenerate the Python stubs for protos/ (the only wire contract).

Why one script: the generated code is committed so that an agent install needs
no code generator, and CI must be able to tell when it is stale. Run with no
arguments to rewrite ``edgefleet/v1``; run with ``--check`` to fail (exit 1)
when the committed files differ from what the protos produce.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("edgefleet") / "v1"


def _proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.glob("edgefleet/v1/*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every proto file into ``out_root``; return the files written."""
    from grpc_tools import protoc

    well_known = str(resources.files("grpc_tools") / "_proto")
    protos = [str(p.relative_to(PROTO_ROOT)) for p in _proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    package = out_root / PACKAGE_DIR
    (package / "__init__.py").write_text(
        '"""Generated from protos/edgefleet/v1 by scripts/gen_protos.py. Do not edit."""\n'
    )
    return sorted(package.iterdir())


def _stale_files(fresh: Path) -> list[str]:
    committed = ROOT / PACKAGE_DIR
    fresh_pkg = fresh / PACKAGE_DIR
    names = {p.name for p in fresh_pkg.iterdir() if p.is_file()}
    names |= {p.name for p in committed.glob("*") if p.is_file()} if committed.exists() else set()
    stale = []
    for name in sorted(names):
        a, b = committed / name, fresh_pkg / name
        if not (a.exists() and b.exists() and filecmp.cmp(a, b, shallow=False)):
            stale.append(str(PACKAGE_DIR / name))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = _stale_files(Path(tmp))
        if args.check:
            if stale:
                print(
                    "generated stubs are stale; run: python scripts/gen_protos.py", file=sys.stderr
                )
                for name in stale:
                    print(f"  {name}", file=sys.stderr)
                return 1
            print("generated stubs are current")
            return 0
        target = ROOT / PACKAGE_DIR
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(Path(tmp) / PACKAGE_DIR, target)
        print(f"wrote {len(list(target.iterdir()))} files to {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
