"""Generate edgefleet's Grafana dashboards from typed code (grafana-foundation-sdk).

Why code: every panel's PromQL lives in one list that the tests also read, so a
dashboard cannot query a metric the coordinator does not export without a red
test. Run ``python deploy/grafana/generate.py`` after editing; the JSON under
``deploy/grafana/dashboards/`` is committed (Grafana provisions it as is) and a
test fails when it is stale.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE_UID = "prometheus"  # deploy/grafana/provisioning/datasources/prometheus.yml


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    title: str
    kind: str  # "timeseries" | "stat"
    queries: tuple[Query, ...]
    unit: str = ""
    description: str = ""


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    panels: tuple[PanelSpec, ...]


# Fleet gauges come from Redis and are identical on every replica: aggregate with max.
DASHBOARDS: tuple[DashboardSpec, ...] = (
    DashboardSpec(
        "edgefleet-fleet",
        "edgefleet / Fleet overview",
        "Is the fleet alive? Devices online/offline, by profile; registrations and heartbeats.",
        (
            PanelSpec(
                "Devices online",
                "stat",
                (Query('max(edgefleet_devices{status="online",profile="all"})'),),
            ),
            PanelSpec(
                "Devices offline",
                "stat",
                (Query('max(edgefleet_devices{status="offline",profile="all"})'),),
            ),
            PanelSpec(
                "Online devices by profile",
                "timeseries",
                (
                    Query(
                        'max by (profile) (edgefleet_devices{status="online",profile!="all"})',
                        "{{profile}}",
                    ),
                ),
            ),
            PanelSpec(
                "Registrations per second",
                "timeseries",
                (
                    Query(
                        "sum by (outcome) (rate(edgefleet_device_registrations_total[5m]))",
                        "{{outcome}}",
                    ),
                ),
                unit="reqps",
            ),
            PanelSpec(
                "Heartbeats per second",
                "timeseries",
                (Query("sum by (outcome) (rate(edgefleet_heartbeats_total[5m]))", "{{outcome}}"),),
                unit="reqps",
            ),
            PanelSpec(
                "gRPC p99 latency by method",
                "timeseries",
                (
                    Query(
                        "histogram_quantile(0.99, sum by (le, method) "
                        "(rate(edgefleet_grpc_server_handling_seconds_bucket[5m])))",
                        "{{method}}",
                    ),
                ),
                unit="s",
            ),
            PanelSpec(
                "Telemetry records per second",
                "timeseries",
                (
                    Query(
                        "sum by (outcome) (rate(edgefleet_telemetry_records_total[5m]))",
                        "{{outcome}}",
                    ),
                ),
            ),
            PanelSpec(
                "State store up",
                "stat",
                (Query("min(edgefleet_state_store_up)"),),
            ),
        ),
    ),
    DashboardSpec(
        "edgefleet-rollouts",
        "edgefleet / Rollouts",
        "Where is each rollout, and did anything roll back?",
        (
            PanelSpec(
                "Rollouts by state",
                "timeseries",
                (Query("max by (state) (edgefleet_rollouts)", "{{state}}"),),
            ),
            PanelSpec(
                "Devices in active rollouts by status",
                "timeseries",
                (
                    Query(
                        "max by (model, status) (edgefleet_rollout_devices)", "{{model}} {{status}}"
                    ),
                ),
            ),
            PanelSpec(
                "Rollbacks (1h) by cause",
                "timeseries",
                (
                    Query(
                        "sum by (model, cause) (increase(edgefleet_rollout_rollbacks_total[1h]))",
                        "{{model}} {{cause}}",
                    ),
                ),
            ),
            PanelSpec(
                "Waves promoted (1h)",
                "stat",
                (Query("sum(increase(edgefleet_rollout_wave_advances_total[1h]))"),),
            ),
        ),
    ),
    DashboardSpec(
        "edgefleet-models",
        "edgefleet / Model performance",
        "How each variant performs on each device profile, as the devices report it.",
        (
            PanelSpec(
                "p95 inference latency by variant and profile",
                "timeseries",
                (
                    Query(
                        "histogram_quantile(0.95, sum by (le, variant, profile) "
                        "(rate(edgefleet_inference_latency_seconds_bucket[5m])))",
                        "{{variant}} on {{profile}}",
                    ),
                ),
                unit="s",
            ),
            PanelSpec(
                "Inferences per second",
                "timeseries",
                (
                    Query(
                        "sum by (variant, profile) (rate(edgefleet_inference_requests_total[5m]))",
                        "{{variant}} on {{profile}}",
                    ),
                ),
                unit="reqps",
            ),
            PanelSpec(
                "Error rate",
                "timeseries",
                (
                    Query(
                        "sum by (variant, profile) (rate(edgefleet_inference_errors_total[5m])) / "
                        "clamp_min(sum by (variant, profile) "
                        "(rate(edgefleet_inference_requests_total[5m])), 1e-9)",
                        "{{variant}} on {{profile}}",
                    ),
                ),
                unit="percentunit",
            ),
            PanelSpec(
                "Accuracy on labelled local data",
                "timeseries",
                (
                    Query(
                        "max by (variant, profile) (edgefleet_inference_accuracy_ratio)",
                        "{{variant}} on {{profile}}",
                    ),
                ),
                unit="percentunit",
            ),
        ),
    ),
    DashboardSpec(
        "edgefleet-federated",
        "edgefleet / Federated training",
        "Is federated fine-tuning converging, and who takes part?",
        (
            PanelSpec(
                "Round loss",
                "timeseries",
                (Query("max by (model) (edgefleet_fl_round_loss)", "{{model}}"),),
            ),
            PanelSpec(
                "Round accuracy",
                "timeseries",
                (Query("max by (model) (edgefleet_fl_round_accuracy_ratio)", "{{model}}"),),
                unit="percentunit",
            ),
            PanelSpec(
                "Participants per round",
                "timeseries",
                (Query("max by (model) (edgefleet_fl_round_participants)", "{{model}}"),),
            ),
            PanelSpec(
                "Rounds (1h) by outcome",
                "timeseries",
                (
                    Query(
                        "sum by (outcome) (increase(edgefleet_fl_rounds_total[1h]))", "{{outcome}}"
                    ),
                ),
            ),
        ),
    ),
)


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every panel query: what the tests run."""
    return [(d.uid, p.title, q.expr) for d in DASHBOARDS for p in d.panels for q in p.queries]


def build(spec: DashboardSpec) -> dict[str, object]:
    from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    ds = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
    board = (
        dashboard.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["edgefleet"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
    )
    for i, panel in enumerate(spec.panels):
        builder = stat.Panel() if panel.kind == "stat" else timeseries.Panel()
        builder = builder.title(panel.title).datasource(ds).height(8).span(12 if i < 99 else 24)
        if panel.unit:
            builder = builder.unit(panel.unit)
        if panel.description:
            builder = builder.description(panel.description)
        for ref, q in zip("ABCDEFGH", panel.queries, strict=False):
            query = prometheus.Dataquery().expr(q.expr).ref_id(ref)
            if q.legend:
                query = query.legend_format(q.legend)
            builder = builder.with_target(query)
        board = board.with_panel(builder)
    encoded: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render_all() -> dict[str, str]:
    return {
        f"{spec.uid}.json": json.dumps(build(spec), indent=2, sort_keys=True) + "\n"
        for spec in DASHBOARDS
    }


def main(argv: list[str]) -> int:
    rendered = render_all()
    if "--check" in argv:
        stale = [
            n
            for n, text in rendered.items()
            if not (OUT / n).exists() or (OUT / n).read_text() != text
        ]
        if stale:
            print(f"stale dashboards: {stale}; run python deploy/grafana/generate.py")
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (OUT / name).write_text(text)
    print(f"wrote {len(rendered)} dashboards to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
