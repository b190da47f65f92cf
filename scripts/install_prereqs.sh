#!/usr/bin/env bash
# Install the system packages edgefleet's suite and demo use, on a Debian machine, if missing.
#
# Used by `make test`, `make demo` (espeak-ng only: `install_prereqs.sh espeak-ng`) and `.ci/run`
# (one list, one place). Needs root or passwordless sudo; when
# it has neither it says which packages are missing and exits 0, so `make test` still runs and
# the tests that need them skip with the reason (under CI=true those skips become failures).
#
#   redis-server              tests against a real server (and Redis Cluster)
#   prometheus (+ promtool)   rule/query checks against a live Prometheus
#   nftables, iproute2        network-namespace fault tests (cut cables, loss)
#   docker.io, containerd,    the Docker stack test and `simulate --backend docker`;
#   docker-compose, debootstrap  debootstrap builds the local base image (no registry here)
#   espeak-ng, sox            the offline keyword-spotting dataset (speech synthesis)
#   gcc                       compiles the C source `models export --format c` writes
#   haproxy                   the replicas' TCP load balancer, checked and run in front of
#                             real replicas (deploy/compose/haproxy.cfg)
#
# Starts nothing: the tests start (and stop) the servers they need.
set -euo pipefail

# command -> Debian package that provides it
declare -A provides=(
  [redis-server]=redis-server
  [prometheus]=prometheus
  [promtool]=prometheus
  [nft]=nftables
  [ip]=iproute2
  [tc]=iproute2
  [dockerd]=docker.io
  [containerd]=containerd
  [docker-compose]=docker-compose
  [debootstrap]=debootstrap
  [espeak-ng]=espeak-ng
  [sox]=sox
  [gcc]=gcc
  [haproxy]=haproxy
)

# with arguments, only those commands (`make demo` needs espeak-ng alone); without, all of them
wanted=("$@")
if ((${#wanted[@]} == 0)); then
  wanted=("${!provides[@]}")
fi
need=()
for cmd in "${wanted[@]}"; do
  if [ -z "${provides[$cmd]+x}" ]; then
    echo "install_prereqs: unknown command '$cmd' (known: ${!provides[*]})" >&2
    exit 2
  fi
  command -v "$cmd" >/dev/null 2>&1 || need+=("${provides[$cmd]}")
done
if ((${#need[@]} == 0)); then
  exit 0
fi
mapfile -t unique < <(printf '%s\n' "${need[@]}" | sort -u)

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo_cmd=(sudo -n)
  else
    echo "install_prereqs: not root and no passwordless sudo; missing: ${unique[*]}" >&2
    echo "install_prereqs: install them with: sudo apt-get install ${unique[*]}" >&2
    echo "install_prereqs: (tests that need them will skip, and fail under CI=true)" >&2
    exit 0
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_prereqs: no apt-get (not Debian/Ubuntu); install by hand: ${unique[*]}" >&2
  exit 0
fi
echo "install_prereqs: installing ${unique[*]}" >&2
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
  "${unique[@]}" >/dev/null
echo "install_prereqs: done" >&2
