#!/bin/sh
# The coordinator image's entrypoint: `edgefleet coordinator start` with TLS, its CA published.
#
# TLS is the default. Before the coordinator starts, `edgefleet certs init` makes sure the CA
# (and a server certificate) exist in the data dir -- created once, kept in the data volume --
# and the CA *certificate* (public; never the key) is copied to $EDGEFLEET_CA_EXPORT, a path
# compose mounts from a volume the agent containers read (read-only) to verify the coordinator.
# The copy is atomic and made on every start, so it always matches the CA in the data volume.
#
# Plaintext only when asked for explicitly: EDGEFLEET_INSECURE=1 (see
# docker-compose.insecure.yml) or --insecure; the coordinator then logs an INSECURE warning and
# nothing is published.
set -eu

data="${EDGEFLEET_DATA_DIR:-/var/lib/edgefleet/data}"
insecure=0
case "${EDGEFLEET_INSECURE:-}" in
"" | 0 | false | False | FALSE | no | off) ;;
*) insecure=1 ;;
esac
for arg in "$@"; do
    if [ "$arg" = "--insecure" ]; then insecure=1; fi
done

if [ "$insecure" = 0 ] && [ -n "${EDGEFLEET_CA_EXPORT:-}" ]; then
    # a fleet identity shared by several replicas (EDGEFLEET_FLEET_DIR, a mounted secret)
    # carries the CA to publish; otherwise the data dir's own, created here on first start
    ca="${EDGEFLEET_FLEET_DIR:+$EDGEFLEET_FLEET_DIR/ca.pem}"
    if [ -z "$ca" ]; then
        edgefleet certs init --data-dir "$data" --json >/dev/null
        ca="$data/tls/ca.pem"
    fi
    tmp="$EDGEFLEET_CA_EXPORT.tmp.$$"
    cp "$ca" "$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$EDGEFLEET_CA_EXPORT"
    echo "edgefleet: CA certificate published at $EDGEFLEET_CA_EXPORT" >&2
fi

exec edgefleet coordinator start --data-dir "$data" "$@"
