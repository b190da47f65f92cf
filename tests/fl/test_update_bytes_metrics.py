"""Bytes on the wire per federated round: run record -> fleet state -> /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from edgefleet.coordinator.metrics import CoordinatorMetrics


def test_round_update_bytes_reach_the_fleet_state_and_the_metrics(redis_url: str) -> None:
    from edgefleet.cli.train_cmds import _report_rounds
    from tests.fl.test_train_cli import fl_snapshot

    rounds = [
        {"round": 1, "train_loss": 0.9, "test_acc": 0.5, "participants": ["a"], "bytes_up": 7},
        {"round": 2, "train_loss": 0.4, "test_acc": 0.7, "participants": ["a"], "bytes_up": 4096},
    ]
    _report_rounds(redis_url, "mlp", "run-b", rounds, failed=False)
    latest, outcomes = fl_snapshot(redis_url)
    [mlp] = latest
    assert (mlp.round, mlp.update_bytes) == (2, 4096)

    metrics = CoordinatorMetrics(CollectorRegistry())
    metrics.set_federated(latest, outcomes)
    text = generate_latest(metrics.registry).decode()
    assert 'edgefleet_fl_round_update_bytes{model="mlp"} 4096.0' in text
