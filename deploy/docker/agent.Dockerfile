# The edgefleet device agent: a small image with no torch and no coordinator code.
#
#   docker build -f deploy/docker/agent.Dockerfile -t edgefleet-agent .          # official base
#   scripts/docker_build.py --images agent                                       # offline base
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
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Certificates, pip.conf and wheels the build script copied in (empty for normal builds).
COPY deploy/docker/build-extras/ /tmp/build-extras/
COPY deploy/docker/install-deps.sh /tmp/install-deps.sh
COPY pyproject.toml README.md /src/
COPY locks/ /src/locks/
# Dependencies first (a layer that survives source edits), the project without deps after.
RUN sh /tmp/install-deps.sh "$EXTRAS"
COPY edgefleet/ /src/edgefleet/
COPY agent/ /src/agent/
# The wheel is one distribution over three folders; the coordinator side is built here and then
# removed, so the runtime stage carries only the shared namespace and the agent.
COPY coordinator/ /src/coordinator/
RUN set -eu; \
    if [ -f /tmp/build-extras/pip.conf ]; then export PIP_CONFIG_FILE=/tmp/build-extras/pip.conf; fi; \
    /opt/venv/bin/pip install --no-deps --no-build-isolation /src; \
    /opt/venv/bin/pip uninstall -y -q pip setuptools wheel; \
    site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    rm -rf "$site/edgefleet/coordinator" "$site/edgefleet/cli" "$site/edgefleet/modelops" \
           "$site/edgefleet/devtools"; \
    rm -f /opt/venv/bin/edgefleet   # the operator CLI entry point; its code is not in this image

# --- runtime: the venv on the bare python stage, run as an unprivileged user.
FROM python AS runtime
RUN useradd --no-log-init --uid 10001 --user-group --home-dir /var/lib/edgefleet --create-home \
        --shell /usr/sbin/nologin edgefleet \
    && install -d -o edgefleet -g edgefleet -m 0700 /var/lib/edgefleet/agent
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
USER 10001:10001
WORKDIR /var/lib/edgefleet
# The identity lives here; mount a volume to keep the same device across container restarts.
VOLUME ["/var/lib/edgefleet/agent"]
ENTRYPOINT ["edgefleet-agent", "--state-dir", "/var/lib/edgefleet/agent"]
CMD ["--profile", "auto"]
