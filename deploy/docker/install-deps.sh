#!/bin/sh
# Used inside the image builds: make /opt/venv and install the project's dependencies for the
# given extras (comma-separated), read from pyproject.toml so the list is never duplicated.
# pip settings come from /tmp/build-extras/pip.conf when scripts/docker_build.py provided one.
set -eu
extras="${1:-}"
if [ -f /tmp/build-extras/pip.conf ]; then export PIP_CONFIG_FILE=/tmp/build-extras/pip.conf; fi
case ",$extras," in
*,compress,*)
    # torch must be the CPU wheel: a local one from the build script, else PyTorch's CPU index.
    if ! ls /tmp/build-extras/wheels/torch-*.whl >/dev/null 2>&1; then
        export PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
    fi
    ;;
esac
python3 -m venv /opt/venv
python3 - "$extras" >/tmp/requirements.txt <<'PY'
import sys
import tomllib

project = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"])
for extra in filter(None, sys.argv[1].split(",")):
    deps += project["optional-dependencies"][extra]
deps += ["setuptools>=68", "wheel"]  # to install the project itself without build isolation
print("\n".join(deps))
PY
/opt/venv/bin/pip install -q -r /tmp/requirements.txt
