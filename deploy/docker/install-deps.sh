#!/bin/sh
# Used inside the image builds: make /opt/venv and install exactly the locked dependencies for the
# given extras (comma-separated) from /src/locks/<profile>.txt, hashes required (the same locks
# `make demo`/`make test` install from; scripts/lock.py makes them).
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
# extras -> lock profile (scripts/lock.py PROFILES)
case "$extras" in
"") profile=base ;;
coordinator) profile=coordinator ;;
coordinator,compress | compress,coordinator) profile=coordinator-compress ;;
agent-onnx,agent-mcu | agent-mcu,agent-onnx) profile=agent ;;
*)
    echo "install-deps: no lock for extras '$extras' (locks: base, agent, coordinator, coordinator-compress)" >&2
    exit 2
    ;;
esac
python3 -m venv /opt/venv
/opt/venv/bin/pip install -q --no-deps --require-hashes -r "/src/locks/$profile.txt"
