# The edgefleet coordinator (and the operator CLI): gRPC API over TLS, Prometheus /metrics, state
# in Redis.
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t edgefleet-coordinator .
#   docker build ... --build-arg EXTRAS=coordinator,compress .   # + the compression stack (CPU torch)
#   scripts/docker_build.py [--compress]                          # offline: local base, local wheels
#
# No "# syntax" line and no RUN --mount on purpose: docker-compose 1.29 and CLIs without buildx
# build with the legacy builder, which must work too.
ARG BASE_IMAGE=python:3.11-slim

# --- python: the base plus Python >= 3.11 with venv. The official image has it; a bare
#     Debian bookworm base (what scripts/docker_build.py makes offline) gets Debian's 3.11.
FROM ${BASE_IMAGE} AS python
# Marks every stage, so scripts/docker_build.py can prune only its own superseded images.
LABEL org.edgefleet.build="true"
RUN set -eu; \
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version'

# --- builder: a venv in /opt/venv with the dependencies, then the project itself.
FROM python AS builder
# "coordinator" or "coordinator,compress" (adds torch from a CPU wheel; see install-deps.sh).
ARG EXTRAS=coordinator
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Certificates, pip.conf and wheels the build script copied in (empty for normal builds).
COPY deploy/docker/build-extras/ /tmp/build-extras/
COPY deploy/docker/install-deps.sh /tmp/install-deps.sh
COPY pyproject.toml README.md /src/
COPY locks/ /src/locks/
# Dependencies first (a layer that survives source edits), the project without deps after.
RUN TORCH_INDEX_URL="$TORCH_INDEX_URL" sh /tmp/install-deps.sh "$EXTRAS"
COPY edgefleet/ /src/edgefleet/
COPY agent/ /src/agent/
COPY coordinator/ /src/coordinator/
RUN set -eu; \
    if [ -f /tmp/build-extras/pip.conf ]; then export PIP_CONFIG_FILE=/tmp/build-extras/pip.conf; fi; \
    /opt/venv/bin/pip install --no-deps --no-build-isolation /src; \
    /opt/venv/bin/pip uninstall -y -q pip setuptools wheel

# --- runtime: the venv on the bare python stage, run as an unprivileged user.
FROM python AS runtime
RUN useradd --no-log-init --uid 10001 --user-group --home-dir /var/lib/edgefleet --create-home \
        --shell /usr/sbin/nologin edgefleet \
    && install -d -o edgefleet -g edgefleet -m 0700 /var/lib/edgefleet/data \
    && install -d -o edgefleet -g edgefleet -m 0755 /var/lib/edgefleet/ca
COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker/grpc-healthcheck.py /usr/local/bin/edgefleet-healthcheck
COPY deploy/docker/coordinator-entrypoint.sh /usr/local/bin/edgefleet-coordinator
# EDGEFLEET_DATA_DIR is also where the CLI inside the container finds the CA (DATA_DIR/tls/ca.pem).
# EDGEFLEET_CA_EXPORT: where the entrypoint publishes the CA certificate for agents (compose
# mounts a shared volume on /var/lib/edgefleet/ca); empty = do not publish.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8 \
    EDGEFLEET_DATA_DIR=/var/lib/edgefleet/data EDGEFLEET_CA_EXPORT=/var/lib/edgefleet/ca/ca.pem
USER 10001:10001
WORKDIR /var/lib/edgefleet
# Tokens, the CA and its key (tls/), and the embedded Redis when no EDGEFLEET_REDIS_URL is given.
VOLUME ["/var/lib/edgefleet/data"]
# gRPC (server-auth TLS: enrolment, admin, health), the devices' mutual-TLS port, /metrics.
EXPOSE 50051 50052 9464
# gRPC health of the default port, over TLS; compose overrides the address where it differs.
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
    CMD ["edgefleet-healthcheck", "127.0.0.1:50051"]
# TLS by default (a CA in the data dir, created on first start); see coordinator-entrypoint.sh.
ENTRYPOINT ["edgefleet-coordinator"]
# 0.0.0.0 is the container's own network namespace; publish the ports on 127.0.0.1 or pass
# --host 127.0.0.1 with host networking. docker-compose.yml binds the service name instead, so
# the device endpoint the coordinator tells agents (HOST:50052) is one they can reach.
CMD ["--host", "0.0.0.0", "--port", "50051", "--device-port", "50052", "--metrics-port", "9464"]
