"""One synchronous round under Flower's SecAgg+ (``secure-agg``): the server sees only the sum.

Flower 1.42 ships SecAgg+ (Bell et al., CCS 2020) as ``SecAggPlusWorkflow`` on the server and
``secaggplus_mod`` on the client, both on Flower's legacy compat layer: the workflow samples
through a legacy ``Strategy.configure_fit`` over a ``ClientManager``, hands the nodes legacy
``FitIns`` records, and the mod expects the training handler to answer in legacy ``FitRes``
records. Rather than reimplement the protocol, this module adapts our round to that layer:
the selected nodes are registered as ``GridClientProxy``s, the model goes out as an ordered
list of tensors whose names travel in the config (``param-names``), and the ClientApp answers
the legacy records when it sees them (:func:`edgefleet.agent.fl.clientapp.train`). Each round
is four message exchanges (setup, key sharing, masked vectors, unmasking) instead of one.

What the server learns is the weighted sum of the models (weights: local example counts,
``max-weight`` bounds them), dequantized: no device's model and no per-device metrics.

**Light-scope devices** (TinyTL, sparse, head; ``partial-updates``, on by default): a partial
reply would change the length of the vector SecAgg+ sums, and a whole model would dilute the
trained tensors' mean with the untrained copies. So every device sends the same layout
(:func:`edgefleet.agent.fl.clientapp.secure_partial_vector`): each tensor, zeros where it did
not train, then one 0/1 weight per tensor. Flower's workflow already weights every entry by
the device's example count and divides by their total, so the sum's tensors are
``sum_i n_i t_i / N`` over the devices that trained them and its weight vector
``sum_i n_i / N`` over the same devices; :func:`holders_mean` divides one by the other:
PartialFedAvg's per-tensor mean, and a tensor nobody trained keeps its global value. The
server learns, beyond the sum, only the example-weighted share of devices that trained each
tensor, never which ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid

from edgefleet.fl.contract import TrainConfig
from edgefleet.flower import model as fl_model
from edgefleet.flower.grid_io import exchange

if TYPE_CHECKING:
    from edgefleet.flower.run_settings import RunSettings

__all__ = ["MIN_DEVICES", "holders_mean", "payload_bytes", "run_secure_round", "secure_round"]


def secure_round(
    grid: Grid,
    context: Context,
    node_ids: list[int],
    params: fl_model.Arrays,
    config: dict[str, Any],
    server_round: int,
    timeout: float,
    *,
    partial: bool = True,
) -> fl_model.Arrays | None:
    """Run one SecAgg+ round on ``node_ids``; the aggregated model, or None if it halted.

    ``partial``: devices answer with the fixed light-scope layout (each tensor averaged over
    the devices that trained it); without it they send whole models (untrained tensors as
    received), Flower's plain weighted mean.

    Halting (fewer than the reconstruction threshold of nodes left at a stage) is Flower's
    protocol outcome; the caller fails the round as it fails any round short of devices.
    """
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    names = list(params)
    n = len(node_ids)
    fit_config = {**config, "param-names": json.dumps(names), TrainConfig.PARTIAL_UPDATES: partial}
    strategy = LegacyFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
        on_fit_config_fn=lambda _rnd: fit_config,
    )  # fmt: skip
    manager = SimpleClientManager()
    for node in node_ids:
        manager.register(GridClientProxy(node_id=node, grid=grid, run_id=grid.run.run_id))
    legacy = LegacyContext(
        context, config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager
    )
    legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord(
        [np.asarray(params[k], np.float32) for k in names]
    )
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: server_round}
    )
    before = legacy.state.array_records[MAIN_PARAMS_RECORD]
    # shares to every node, any n-1 reconstruct: at most one dropout per round survives
    workflow = SecAggPlusWorkflow(
        num_shares=max(n, 3), reconstruction_threshold=max(2, n - 1), timeout=timeout
    )
    workflow(grid, legacy)
    after = legacy.state.array_records[MAIN_PARAMS_RECORD]
    if after is before:
        return None
    arrays = after.to_numpy_ndarrays()
    if partial:
        return holders_mean(params, arrays)
    return {k: np.asarray(v, np.float32) for k, v in zip(names, arrays, strict=True)}


#: a SecAgg+ round's fewest devices: the sum of 2 and either model give the other, and the
#: reconstruction threshold (n-1, at least 2) would survive no dropout
MIN_DEVICES = 3

#: below this a tensor's summed weight counts as zero: it is exactly 0 when nobody trained the
#: tensor (zeros quantize without error), else at least one holder's share of the round's
#: examples (1 of 100,000 is 1e-5), far above SecAgg+'s quantization step (16 / 2**22)
_MIN_WEIGHT = 1e-6


def holders_mean(
    global_params: Mapping[str, np.ndarray[Any, Any]], summed: list[np.ndarray[Any, Any]]
) -> fl_model.Arrays:
    """The secure sum of light-scope layouts, each tensor divided by its weight's sum.

    ``summed`` is the workflow's result for replies laid out by the ClientApp's
    ``secure_partial_vector``: one array per tensor of ``global_params`` (in its order), then
    the per-tensor weights. A weight of exactly 0 (nobody trained the tensor: its zeros
    quantize exactly) keeps the global value; a negative one is quantization noise around 0.
    """
    names = list(global_params)
    if len(summed) != len(names) + 1 or np.shape(summed[-1]) != (len(names),):
        raise ValueError(
            f"a light-scope secure sum has {len(names)} tensors and a weight vector of "
            f"{len(names)}; got {len(summed)} arrays"
        )
    weights = np.asarray(summed[-1], np.float64)
    out: fl_model.Arrays = {}
    for k, total, weight in zip(names, summed[:-1], weights, strict=False):
        g = np.asarray(global_params[k], np.float32)
        out[k] = (
            np.asarray(np.asarray(total, np.float64) / weight, np.float32).reshape(g.shape)
            if weight > _MIN_WEIGHT
            else g
        )
    return out


class _CountingGrid(Grid):
    """The round's view of the Grid, counting the payload bytes of what goes out and in."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.bytes_down = 0
        self.bytes_up = 0

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self.bytes_down += sum(payload_bytes(m) for m in messages)
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self._grid.pull_messages(message_ids))
        self.bytes_up += sum(payload_bytes(m) for m in replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        poll = float(getattr(self._grid, "poll_interval", 0.05))
        return exchange(self, list(messages), timeout or 3600.0, poll)


def payload_bytes(msg: Message) -> int:
    """Arrays plus the bytes and strings of config records (keys, shares, ciphertexts)."""
    if msg.has_error():
        return 0
    total = sum(len(a.data) for rec in msg.content.array_records.values() for a in rec.values())
    for rec in msg.content.config_records.values():
        for value in rec.values():
            items = value if isinstance(value, list) else [value]
            total += sum(len(v) for v in items if isinstance(v, bytes | str))
    return total


def run_secure_round(
    view: Grid,
    settings: RunSettings,
    server_round: int,
    params: fl_model.Arrays,
    config: dict[str, Any],
    facts: Mapping[int, Mapping[str, Any]],
    test_score: Callable[[Mapping[str, Any]], tuple[float, float] | tuple[None, None]],
    started: float,
) -> tuple[fl_model.Arrays, dict[str, Any]]:
    """One SecAgg+ round on the selected nodes online: the new model and the round's record."""
    nodes = list(view.get_node_ids())
    if len(nodes) < MIN_DEVICES:
        raise RuntimeError(
            f"round {server_round}: SecAgg+ needs {MIN_DEVICES} devices online, "
            f"{len(nodes)} are (with 2, either device learns the other's model from the sum)"
        )
    counting = _CountingGrid(view)
    context = Context(
        run_id=view.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
    )
    new = secure_round(
        counting, context, nodes, params, config, server_round, settings.round_timeout,
        partial=settings.secure_agg_partial,
    )  # fmt: skip
    if new is None:
        raise RuntimeError(
            f"round {server_round}: SecAgg+ halted (fewer than its reconstruction threshold "
            f"of {len(nodes)} devices answered a stage)"
        )
    test_loss, test_acc = test_score(new)
    doc = {
        "round": server_round,
        "participants": [str(facts.get(n, {}).get("device", n)) for n in nodes],
        "failed": 0,
        "secure_agg": True,
        "secure_agg_partial": settings.secure_agg_partial,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "seconds": time.monotonic() - started,
        "ended": time.time(),
        "codec": "none",
        "bytes_up": counting.bytes_up,
        "bytes_down": counting.bytes_down,
    }
    return new, doc
