#!/bin/bash
# Start Prometheus, first rewriting scrape addresses when EDGEFLEET_PROMETHEUS_REWRITE is set.
#
# Why: deploy/prometheus/prometheus.yml names targets by compose service (coordinator:9464).
# With host networking (docker-compose.offline.yml) there is no service DNS and ports are chosen
# per stack, and Prometheus cannot expand variables in its config. So the config directory is
# copied to /tmp (rule files keep their relative paths) and each "FROM=TO" pair of the
# space-separated variable is substituted, e.g. "coordinator:9464=127.0.0.1:19464".
set -euo pipefail

args=("$@")
if [[ -n "${EDGEFLEET_PROMETHEUS_REWRITE:-}" ]]; then
    for i in "${!args[@]}"; do
        if [[ "${args[$i]}" == --config.file=* ]]; then
            src="${args[$i]#--config.file=}"
            work="$(mktemp -d /tmp/prometheus-config.XXXXXX)"
            cp -r "$(dirname "$src")/." "$work/"
            cfg="$work/$(basename "$src")"
            for pair in $EDGEFLEET_PROMETHEUS_REWRITE; do
                from="${pair%%=*}"
                to="${pair#*=}"
                sed -i "s|${from}|${to}|g" "$cfg"
            done
            args[i]="--config.file=$cfg"
        fi
    done
fi
exec prometheus "${args[@]}"
