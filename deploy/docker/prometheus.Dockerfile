# Prometheus from Debian's package (2.42, with promtool), for machines that cannot pull
# prom/prometheus (docker-compose.offline.yml).
ARG BASE_IMAGE=edgefleet-base:bookworm
FROM ${BASE_IMAGE}
LABEL org.edgefleet.build="true"
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    # 212 MB of raw tz sources from libjs-moment-timezone; the UI loads the bundled *.js files.
    rm -rf /usr/share/javascript/moment-timezone/data; \
    install -d -o prometheus -g prometheus -m 0750 /prometheus
COPY deploy/docker/prometheus-entrypoint.sh /usr/local/bin/edgefleet-prometheus
USER prometheus
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/edgefleet-prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", \
     "--web.listen-address=127.0.0.1:9090"]
