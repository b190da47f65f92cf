#!/usr/bin/env bash
# Install what the Docker stack test needs on a Debian machine, if missing: the engine (Debian's
# docker.io: dockerd + containerd + runc), docker-compose 1.29, debootstrap (for the local base
# image when no registry can be reached) and prometheus (promtool, and the Prometheus tests).
# Called from .ci/run. Starts nothing: tests/docker starts (and stops) the engine itself.
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v containerd >/dev/null 2>&1 || need+=(containerd)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)

if ((${#need[@]} == 0)); then
  exit 0
fi
sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
mapfile -t unique < <(printf '%s\n' "${need[@]}" | sort -u)
echo "ci_docker_prereqs: installing ${unique[*]}" >&2
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${unique[@]}"
