"""Flower's stock baseline for ``fl_rounds.py``: FedAvg's own ``start`` loop + a minimal ClientApp.

Written the way Flower's templates write it (torch imported at module level, separate
train and evaluate messages, ``Strategy.start`` with ``Grid.send_and_receive``), with the same
tiny MLP (64-32-10) and one local step. ``evaluate_fn`` only stamps the time each round ends.
This file is copied into a Flower App directory and loaded by Flower from there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn


def _net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _data(context: Context, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(str(context.node_config["data-path"])) as z:
        return torch.from_numpy(z[f"x_{part}"]), torch.from_numpy(z[f"y_{part}"])


client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    """One local SGD step on the device's shard."""
    model = _net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())  # type: ignore[union-attr]
    x, y = _data(context, "train")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss = nn.functional.cross_entropy(model(x[:32]), y[:32])
    opt.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    metrics = MetricRecord({"train-loss": float(loss), "num-examples": len(y)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Accuracy on the device's held-out data."""
    model = _net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())  # type: ignore[union-attr]
    x, y = _data(context, "eval")
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    metrics = MetricRecord({"eval-acc": acc, "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


server = ServerApp()


@server.main()
def main(grid: Grid, context: Context) -> None:
    """FedAvg's own round loop; round end times go to ``times-path``."""
    rounds = int(context.run_config["num-rounds"])
    nodes = int(context.run_config["min-nodes"])
    times_path = Path(str(context.run_config["times-path"]))
    stamps: list[float] = []

    def stamp(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        stamps.append(time.time())
        times_path.write_text(json.dumps(stamps))
        return None

    strategy = FedAvg(
        fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=nodes,
        min_evaluate_nodes=nodes, min_available_nodes=nodes,
    )  # fmt: skip
    strategy.start(
        grid=grid, initial_arrays=ArrayRecord(_net().state_dict()), num_rounds=rounds,
        evaluate_fn=stamp,
    )  # fmt: skip
