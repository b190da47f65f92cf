# Redis from Debian's package, for machines that cannot pull redis:7 (docker-compose.offline.yml).
ARG BASE_IMAGE=edgefleet-base:bookworm
FROM ${BASE_IMAGE}
LABEL org.edgefleet.build="true"
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    install -d -o redis -g redis -m 0750 /data
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
# Same defaults as the official image's compose service: append-only file in /data.
ENTRYPOINT ["redis-server"]
CMD ["--bind", "127.0.0.1", "--port", "6379", "--appendonly", "yes", "--dir", "/data"]
