# HAProxy from Debian's package: the TCP load balancer in front of the coordinator replicas
# (docker-compose.replicas.yml). Debian's, not the registry's haproxy image, so the same file
# builds on the local debootstrap base offline (BASE_IMAGE=edgefleet-base:bookworm, made by
# scripts/docker_build.py) and on debian:bookworm-slim with a registry.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.edgefleet.build="true"
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY deploy/compose/haproxy.cfg /etc/haproxy/haproxy.cfg
# The config is checked at build time: a broken one fails the build, not the stack.
RUN haproxy -c -f /etc/haproxy/haproxy.cfg
USER haproxy
# gRPC (enrolment, admin, health), the devices' mutual-TLS port, the stats page.
EXPOSE 50051 50052 8404
# Master-worker in the foreground, logging to stdout.
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
