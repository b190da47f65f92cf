"""HeteroFL as a Flower strategy, so one round loop drives it and Flower's FedAvg/FedProx alike.

:class:`HeteroFL` is a :class:`flwr.serverapp.strategy.FedAvg` whose messages differ per node:
``configure_train`` sends every node the leading slice of the global model at the width it was
given (:func:`edgefleet.flower.serverapp.pick_width` picks it from the node's RAM budget) with
that width's zoo config, and ``aggregate_train`` merges the slices element-wise
(:mod:`edgefleet.flower.heterofl`). The metrics are aggregated like FedAvg's.

Sampling never waits: Flower's sampler sleeps until enough nodes are online, while our round
loop checks availability before a round and fails it rather than hang.

**Partial updates** (:class:`PartialFedAvg`, :class:`PartialFedProx`, and HeteroFL on the same
base): a memory-tight device trains a light scope (TinyTL's biases and head, a sparse update)
and replies with those tensors only. Flower's FedAvg refuses replies whose tensor names
differ; these strategies tell devices that partial replies are welcome
(``partial-updates``) and average every tensor over the replies that hold it, so the tensors a
light device did not train keep the other devices' mean (or the global value when nobody
trained them) instead of being pulled back towards the old model by its unchanged copy.

**Client-side DP** (:class:`PartialClientSideFixedClipping`): devices clip their update with
the untrained tensors' zero delta in (:mod:`edgefleet.agent.fl.dp_clip`), so partial replies
are clipped exactly as whole ones. Flower's noise, ``z * C / n`` on every tensor, is calibrated
for a mean over all ``n`` replies (one device moves it by at most ``C / n``); a tensor averaged
over its ``k`` holders moves by up to ``C / k``, so its noise is ``z * C / k``. Scaled back by
``k``, each tensor is then the holders' sum of clipped updates plus noise ``z * C``: the
Gaussian mechanism on the sum of all replies (sensitivity ``C``, untrained tensors 0),
post-processed per tensor -- the same guarantee as whole models with equal weights, given
that who trained which tensor is public (it is: without SecAgg+ the server sees every reply).
A tensor nobody trained is released unchanged, without noise (it reveals nothing new).

**Server-side DP** (:class:`PartialServerSideFixedClipping`): the server is trusted with the
replies and clips them itself; what is protected is the released global model. Flower's
wrapper zips a reply with the global model tensor by tensor, so it needs whole models, and a
light device's untrained copies would then be averaged in. Here each reply's update is its
tensors minus the global model's same tensors (a tensor it did not send: delta 0), clipped to
norm ``C`` over the tensors it sent -- the norm its whole model's update would have, since
the others' delta is 0 -- and put back as global + clipped delta. The inner partial strategy
averages each tensor over its ``k`` holders and the noise is ``z * C / k`` per tensor, the
client-side class's rule, so the argument is the same: scaled by ``k``, each tensor is the
holders' sum of clipped updates plus ``N(0, (z C)^2)``; all tensors together are the sum of
every reply's zero-padded clipped update (one device changes it by at most ``C``) plus
Gaussian noise ``z * C`` -- the Gaussian mechanism, then per-tensor post-processing. Public:
who trained which tensor (``k``; a device's scope follows from its memory budget, not its
data). As in Flower's calibration the weights are taken as equal (a mean weighted by example
counts moves by the largest weight share times ``C``; Flower's accountant refuses unequal
ones). Whole replies get Flower's clipping (but for :func:`clip_partial_reply`'s two fixes)
and, with ``k = n`` holders everywhere, Flower's noise (``tests/fl/test_dp_partial.py``); ``k``
counts the replies that came back, where Flower divides by the number sampled (too little
noise for the mean when a device drops out).

**Counters are not released** (both DP modes; :mod:`edgefleet.fl.counters`): BatchNorm's
integer ``num_batches_tracked`` (9 in DS-CNN and ResNet-8) counts batches, it is no weight.
Left in, a full-scope device's ``B`` batches added ``3 * B`` to its update's norm (60 at
``B = 20`` against ``C`` = 5-10: the clip shrank the real weight update to a fraction),
Flower's client-side clipping released the 0-d counter unscaled, and it told the server how
many batches the device ran. So a reply's counters are taken as the global model's (delta 0):
devices reset them before clipping (client-fixed, :mod:`edgefleet.agent.fl.dp_clip`),
:func:`clip_partial_reply` does so before computing the delta (server-fixed), and
:func:`noise_per_tensor` adds them no noise; the release keeps the global counters. Nothing
reads them: every BatchNorm in :mod:`edgefleet.zoo` has a ``momentum`` (torch's 0.1), and
torch divides by the counter only when ``momentum`` is None.
A BatchNorm ``running_var`` the noise pushed below 0 is released as 0 (post-processing, the
guarantee unchanged): a negative variance made every later output NaN.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedProx,
)
from flwr.serverapp.strategy.dp_fixed_clipping import validate_replies
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency
from flwr.supercore import log
from flwr.supercore.differential_privacy import get_norm

from edgefleet.fl.contract import Metric, Record, TrainConfig
from edgefleet.fl.counters import floor_variances, is_counter
from edgefleet.flower import heterofl
from edgefleet.flower import model as fl_model

__all__ = [
    "HeteroFL",
    "PartialClientSideFixedClipping",
    "PartialFedAvg",
    "PartialFedProx",
    "PartialServerSideFixedClipping",
    "arrays_of",
    "clip_partial_reply",
    "holder_counts",
    "keep_global_counters",
    "noise_per_tensor",
    "to_record",
]


def to_record(params: Mapping[str, Any]) -> ArrayRecord:
    """numpy arrays as the ArrayRecord a message carries."""
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in params.items()})


def arrays_of(record: ArrayRecord) -> fl_model.Arrays:
    """An ArrayRecord as float32 numpy arrays."""
    return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in record.items()}


class PartialFedAvg(FedAvg):
    """Flower's FedAvg that also aggregates replies holding a subset of the model's tensors.

    Replies that all hold every tensor go through Flower's own ``aggregate_train`` unchanged;
    otherwise each tensor is the weighted mean over the replies holding it
    (:func:`edgefleet.flower.heterofl.aggregate`), and tensors nobody sent keep their value.
    """

    #: the global model of the round in flight (what partial replies are merged into)
    _global: fl_model.Arrays | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's sampling and messages, with ``partial-updates`` in the config."""
        self._global = arrays_of(arrays)
        config[TrainConfig.PARTIAL_UPDATES] = True
        return super().configure_train(server_round, arrays, config, grid)

    def _check_and_log_replies(
        self, replies: Iterable[Message], is_train: bool, validate: bool = True
    ) -> tuple[list[Message], list[Message]]:
        """Flower's checks, but a train reply's tensors may be a subset of the model's."""
        valid, errors = super()._check_and_log_replies(replies, is_train, validate=False)
        if validate and valid:
            contents = [m.content for m in valid]
            validate_message_reply_consistency(
                contents, self.weighted_by_key, check_arrayrecord=False
            )
            if is_train and any(len(c.array_records) != 1 for c in contents):
                raise InconsistentMessageReplies(reason="Expected exactly one ArrayRecord")
        return valid, errors

    def _holders_mean(self, valid: list[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None:
            return None, None
        updates = []
        for msg in valid:
            metrics = next(iter(msg.content.metric_records.values()))
            weight = float(metrics[self.weighted_by_key])  # type: ignore[arg-type]
            updates.append((arrays_of(next(iter(msg.content.array_records.values()))), weight))
        merged = heterofl.aggregate(self._global, updates)
        contents = [msg.content for msg in valid]
        return to_record(merged), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's FedAvg for whole models; per-tensor holders' mean when any is partial."""
        replies = list(replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        if self._global is None:
            return super().aggregate_train(server_round, valid)
        shapes = {k: v.shape for k, v in self._global.items()}
        if all(
            {k: tuple(v.shape) for k, v in next(iter(m.content.array_records.values())).items()}
            == shapes
            for m in valid
        ):
            return super().aggregate_train(server_round, valid)
        return self._holders_mean(valid)


class PartialFedProx(PartialFedAvg, FedProx):
    """Flower's FedProx (its ``proximal-mu`` in the config) with partial replies."""


def holder_counts(replies: Iterable[Message]) -> dict[str, int]:
    """How many (non-error) replies hold each tensor."""
    counts: dict[str, int] = {}
    for msg in replies:
        if msg.has_error() or not msg.content.array_records:
            continue
        for key in next(iter(msg.content.array_records.values())):
            counts[key] = counts.get(key, 0) + 1
    return counts


class PartialClientSideFixedClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping DP wrapper over partial replies: each tensor's noise
    is calibrated to the replies holding it (``z * C / k``; module docstring: why)."""

    _holders: dict[str, int] | None = None
    #: the global model of the round in flight (its counters are what the release keeps)
    _current: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Flower's wrapper (``clipping_norm`` in the config), remembering the global model."""
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's wrapper (checks, inner aggregation, noise), per-tensor noise, the global
        counters kept (devices send them unchanged; one that did not is not released)."""
        replies = list(replies)
        self._holders = holder_counts(replies)
        try:
            aggregated, metrics = super().aggregate_train(server_round, replies)
        finally:
            self._holders = None
        if aggregated is not None and self._current is not None:
            aggregated = keep_global_counters(aggregated, self._current)
        return aggregated, metrics

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        if self._holders is None:  # not inside aggregate_train: Flower's own noise
            return super()._add_noise_to_aggregated_arrays(aggregated_arrays)
        zc = self.noise_multiplier * self.clipping_norm
        return noise_per_tensor(aggregated_arrays, self._holders, zc)


def noise_per_tensor(aggregated: ArrayRecord, holders: Mapping[str, int], zc: float) -> ArrayRecord:
    """Gaussian noise ``zc / k`` on each tensor averaged over its ``k`` holders; a tensor no
    reply held, and a counter, are released as they were (module docstring: why); a running
    variance noised below 0 is released as 0 (:func:`edgefleet.fl.counters.floor_variances`).
    Drawn in the record's order with numpy's global generator, as Flower's own noise is, so
    equal seeds give equal draws."""
    noisy: dict[str, Array] = {}
    for key, array in aggregated.items():
        value = np.array(array.numpy())
        k = holders.get(key, 0)
        if k > 0 and not is_counter(key, array):  # a counter is not released: no noise
            value += np.random.normal(0, zc / k, value.shape).astype(value.dtype)
            value = floor_variances(key, value)
        noisy[key] = Array(np.ascontiguousarray(value))
    log(INFO, "aggregate_train: DP noise z*C/k per tensor (k: its holders, %s)", dict(holders))
    return ArrayRecord(noisy)


def keep_global_counters(aggregated: ArrayRecord, current: ArrayRecord) -> ArrayRecord:
    """``aggregated`` with every counter the global model's: a mean of equal values can come
    back off by a rounding step, and a reply that kept its own counter must not move it."""
    out = ArrayRecord(dict(aggregated.items()))
    for key, array in aggregated.items():
        if is_counter(key, array) and key in current:
            out[key] = current[key]
    return out


def clip_partial_reply(record: ArrayRecord, current: Mapping[str, Any], clip: float) -> ArrayRecord:
    """A reply as global + its update clipped to norm ``clip`` over the tensors it holds.

    Flower's clipping (``compute_clip_model_update``: the same arithmetic, so whole replies
    come out as Flower's wrapper makes them), but the global tensor each reply tensor is
    compared with is found by name: Flower pairs them by position, which needs whole models.
    Two departures from Flower's function: an unchanged reply passes as it is (Flower divides
    by its zero norm), and a 0-d tensor (BatchNorm's ``num_batches_tracked``) is scaled with
    the rest (numpy hands Flower's loop a scalar for it, which its in-place scaling rebinds
    instead of changing, so Flower clips the other tensors and releases that delta in full).
    A counter (:func:`edgefleet.fl.counters.is_counter`) is taken as the global value before
    the delta is computed: it is no weight, so it neither counts in the norm nor is released.
    A tensor the model does not have, or of another shape, is refused in one line.
    """
    unknown = [k for k in record if k not in current]
    if unknown:
        raise ValueError(f"a reply holds tensors the model does not have: {unknown[:3]}")
    keys = list(record)
    base = [np.asarray(current[k]) for k in keys]
    sent = record.to_numpy_ndarrays()
    for key, a, b in zip(keys, sent, base, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"a reply's {key!r} is {a.shape}, the model's is {b.shape}")
    mine = [b.copy() if is_counter(k, a) else a for k, a, b in zip(keys, sent, base, strict=True)]
    update = [np.asarray(np.subtract(a, b)) for a, b in zip(mine, base, strict=True)]
    norm = get_norm(update)
    if norm > 0:
        for a in update:
            a *= min(1, clip / norm)
    clipped = [np.asarray(b + a) for a, b in zip(update, base, strict=True)]
    return ArrayRecord({k: Array(v) for k, v in zip(keys, clipped, strict=True)})


class PartialServerSideFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP wrapper over partial replies: each reply is
    clipped over the tensors it sent and each tensor's noise is ``z * C / k`` over its ``k``
    holders (module docstring: why). Wrap a partial strategy (:class:`PartialFedAvg`): its
    ``configure_train`` tells devices that partial replies are welcome."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's wrapper (checks, accounting, inner aggregation), clipping and noise per
        tensor name."""
        replies_list = list(replies)
        event = self._pop_pending_event(server_round)
        strict = self.accountant is not None
        if not validate_replies(replies_list, self.num_sampled_clients, strict=strict):
            return None, None
        self._validate_uniform_weights(replies_list)
        current = {k: v.numpy() for k, v in self.current_arrays.items()}
        for reply in replies_list:
            for name, record in list(reply.content.array_records.items()):
                reply.content[name] = clip_partial_reply(record, current, self.clipping_norm)
        log(
            INFO,
            "aggregate_train: updates clipped to norm %.4f over their tensors",
            self.clipping_norm,
        )
        holders = holder_counts(replies_list)
        aggregated, metrics = self.strategy.aggregate_train(server_round, replies_list)
        if aggregated:
            zc = self.noise_multiplier * self.clipping_norm
            aggregated = noise_per_tensor(aggregated, holders, zc)
            aggregated = keep_global_counters(aggregated, self.current_arrays)
            self._compose_release(event)
        return aggregated, metrics


class HeteroFL(PartialFedAvg):
    """Width-sliced federated averaging (Diao et al., ICLR 2021) on the Message API.

    ``widths`` maps each eligible node id to its model width; nodes without one are never
    sampled. The global model travels as the full-width ArrayRecord Flower's loop passes in.
    """

    def __init__(
        self,
        widths: Mapping[int, float],
        arch: str,
        arch_override: str = "",
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=0,
            weighted_by_key=Metric.NUM_EXAMPLES,
            arrayrecord_key=Record.ARRAYS,
            configrecord_key=Record.CONFIG,
        )
        self.widths = dict(widths)
        self.arch = arch
        levels = set(self.widths.values())
        self._shapes = {w: fl_model.shapes(arch, w, arch_override) for w in levels}
        self._arch_configs = {
            w: json.dumps(fl_model.arch_config(arch, w, arch_override)) for w in levels
        }
        #: the global model of the round in flight (aggregation merges the slices into it)
        self._global: fl_model.Arrays | None = None

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t└──> HeteroFL nodes per width: %s", self._at(self.widths))

    def _sample(self, grid: Grid, fraction: float, minimum: int) -> list[int]:
        nodes = [n for n in grid.get_node_ids() if n in self.widths]
        size = min(len(nodes), max(int(len(nodes) * fraction), minimum))
        return nodes if size >= len(nodes) else random.sample(nodes, size)

    def _sliced(
        self, params: fl_model.Arrays, config: ConfigRecord, nodes: Iterable[int], kind: str
    ) -> list[Message]:
        messages = []
        for node in nodes:
            width = self.widths[node]
            cfg = ConfigRecord(dict(config))
            cfg[TrainConfig.ARCH_CONFIG] = self._arch_configs[width]
            local = heterofl.slice_params(params, self._shapes[width])
            content = RecordDict(
                {self.arrayrecord_key: to_record(local), self.configrecord_key: cfg}
            )
            messages.append(Message(content, dst_node_id=node, message_type=kind))
        return messages

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Each sampled node gets its width's slice of the global model and zoo config."""
        if self.fraction_train == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes)
        log(INFO, "configure_train: %s nodes at widths %s", len(nodes), self._at(nodes))
        self._global = arrays_of(arrays)
        config[TrainConfig.SERVER_ROUND] = server_round
        config[TrainConfig.PARTIAL_UPDATES] = True
        return self._sliced(self._global, config, nodes, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Every global element: the mean over the nodes whose slice holds it."""
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        return self._holders_mean(valid) if valid else (None, None)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Each node scores its own slice of the global model."""
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes)
        config[TrainConfig.SERVER_ROUND] = server_round
        return self._sliced(arrays_of(arrays), config, nodes, MessageType.EVALUATE)

    def _at(self, nodes: Iterable[int]) -> dict[float, int]:
        at: dict[float, int] = {}
        for node in nodes:
            at[self.widths[node]] = at.get(self.widths[node], 0) + 1
        return dict(sorted(at.items(), reverse=True))
