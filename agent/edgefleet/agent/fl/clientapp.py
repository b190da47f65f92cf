"""Our Flower ClientApp: fine-tune on the device's local shard and report train+eval at once.

Why it looks the way it does:

* Flower 1.42 starts a fresh ``flwr-clientapp`` process for **every** message, so module-level
  imports are paid every round. This module imports numpy and Flower's public message API
  only. Conv nets train in the device's long-lived training worker when its ``node_config``
  names one (``train-worker``, :mod:`.train_worker`: torch imported once, the shard's features
  kept warm); without one, or when it does not answer, torch is imported here, in the handler
  (logged once per run). The zoo ``mlp`` trains in numpy (:mod:`edgefleet.fl.mlp_numpy`), no
  torch at all, unless ``mlp-in-worker`` sends it to the worker too.
* Evaluation is folded into the ``train`` reply: the client first scores the global model it
  received on its held-out data, then fine-tunes and scores again. One message per round
  instead of two halves the per-round message overhead.
* A conv net's round is planned under the device's memory budget (:mod:`.torch_train`): the
  widest of full, sparse, TinyTL and head fine-tuning that fits, on the memory-light path
  on-device fine-tuning uses, so a tight device joins the round training fewer tensors; when
  the server takes partial updates (``partial-updates``) it replies with those tensors only.
* The device's identity, resources and data come from its SuperNode's ``node_config``
  (``device-id``, ``profile``, ``ram-bytes``, ``battery``, ``labels``, ``data-path`` ...), which
  the agent's supervisor sets; the ``query`` handler reports them so the ServerApp can select
  participants (Flower itself only knows node ids). Those keys, the message records and their
  keys are the shared contract in :mod:`edgefleet.fl.contract`.
* Under client-side DP (``clipping_norm`` in the config) the update is clipped here, before it
  leaves (:mod:`.dp_clip`), and integer counters are not released: BatchNorm's
  ``num_batches_tracked`` goes back as received (delta 0), so the batches a device ran neither
  inflate its update's norm nor travel (:mod:`edgefleet.fl.counters`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgefleet.agent.fl.dp_clip import clip_when_asked
from edgefleet.fl.budget import DEFAULT_RAM_FRACTION, training_bytes, widest_activation
from edgefleet.fl.contract import FACT_KEYS, LORA_ARCH, Metric, Node, Record, TrainConfig
from edgefleet.fl.partition import Shard

__all__ = ["app", "training_bytes", "widest_activation"]


def _secagg_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round (``secure-agg``).

    The mod runs the protocol's client stages itself (keys, shares, masking) and calls the
    train handler only in its masked-vector stage, with legacy FitIns records.
    """
    if "secaggplus_configs" not in msg.content.config_records:
        return call_next(msg, context)  # type: ignore[no-any-return]
    from flwr.client.mod import secaggplus_mod

    return secaggplus_mod(msg, context, call_next)


app = ClientApp(mods=[_secagg_when_asked, clip_when_asked])

#: Fraction of the device's RAM the agent lets one fine-tuning step use (the shared one).
DEFAULT_BUDGET_FRACTION = DEFAULT_RAM_FRACTION


def _facts(context: Context) -> dict[str, Any]:
    """The node's self-description: node_config, refreshed from the agent's status file."""
    cfg = dict(context.node_config)
    facts = {k: cfg[k] for k in FACT_KEYS if k in cfg}
    status = cfg.get(Node.STATUS_PATH)
    if isinstance(status, str) and status and Path(status).exists():
        try:
            live = json.loads(Path(status).read_text())
            facts.update({k: v for k, v in live.items() if k in FACT_KEYS})
        except (OSError, ValueError):
            pass  # a torn status file must not fail the query; node_config still answers
    return facts


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report this device's facts (for participant selection; a LoRA base: .lm_base_cache)."""
    facts = _facts(context)
    record = ConfigRecord(
        {k: v if isinstance(v, int | float) else str(v) for k, v in facts.items()}
    )
    asked = msg.content.config_records.get(Record.LM_BASE)
    if asked is not None:  # a LoRA run: can this device train it, does it hold the base?
        from edgefleet.agent.fl.lora_fit import lora_facts

        record.update(lora_facts(asked, context.node_config, context.state))
    return Message(RecordDict({Record.FACTS: record}), reply_to=msg)


def _num(cfg: Mapping[str, object], key: str, default: float) -> float:
    """A numeric config value (Flower's record values are a wide union)."""
    value = cfg.get(key, default)
    return float(value) if isinstance(value, int | float | str) else default


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray[Any, Any]]:
    return {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in record.items()}


def _record(params: dict[str, np.ndarray[Any, Any]]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in params.items()})


def local_shard(context: Context, cfg: Mapping[str, object]) -> Shard:
    """The device's shard; raw audio becomes the model's features here, on the device.

    With a ``frontend`` in the round's config the shard holds raw audio, as a device's
    microphone gives it, and the same frontend code that serves the model computes the MFCC
    (numpy only: no torch on this path).
    """
    from edgefleet.fl.partition import load_shard

    shard = load_shard(str(context.node_config[Node.DATA_PATH]))
    text = str(cfg.get(TrainConfig.FRONTEND, "") or "")
    if not text:
        return shard
    from edgefleet.fl.features import featurize_shard
    from edgefleet.frontend import FrontendSpec

    # the one function on-device fine-tuning uses too (edgefleet.agent.finetune)
    return featurize_shard(shard, FrontendSpec.from_dict(json.loads(text)))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Score the received global model, fine-tune it locally, score again; reply with all."""
    if LEGACY_FIT_CONFIG in msg.content.config_records:  # a SecAgg+ round (secure-agg)
        return Message(_train_legacy(msg.content, context), reply_to=msg)
    cfg = msg.content.config_records.get(Record.CONFIG, ConfigRecord())
    return Message(fine_tune(_arrays(_model_record(msg, cfg, context)), cfg, context), reply_to=msg)


def _model_record(msg: Message, cfg: ConfigRecord, context: Context) -> ArrayRecord:
    """The message's model; a LoRA base sent beside it is verified and cached first."""
    records = msg.content.array_records
    if Record.LM_BASE in records:
        from edgefleet.agent.fl.lm_base_cache import store_sent_base

        store_sent_base(records[Record.LM_BASE], cfg, context.node_config)
    return records[Record.ARRAYS] if Record.ARRAYS in records else next(iter(records.values()))


#: the config record of Flower's legacy FitIns, which secaggplus_mod hands the handler
LEGACY_FIT_CONFIG = "fitins.config"


def _train_legacy(content: RecordDict, context: Context) -> RecordDict:
    """A SecAgg+ round: the model comes and goes as Flower's legacy FitIns/FitRes records.

    ``secaggplus_mod`` masks the FitRes parameters (weighted by its example count) before
    anything leaves the device; the tensor names travel in the config as ``param-names``.
    With ``partial-updates`` the reply has the fixed layout of :func:`secure_partial_vector`.
    """
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(content, keep_input=True)
    names = json.loads(str(fitins.config["param-names"]))
    tensors = parameters_to_ndarrays(fitins.parameters)
    params = {k: np.asarray(v, np.float32) for k, v in zip(names, tensors, strict=True)}
    cfg = ConfigRecord({k: v for k, v in fitins.config.items() if k != "param-names"})
    out = fine_tune(params, cfg, context)
    new = _arrays(out.array_records[Record.ARRAYS])
    metrics = out.metric_records[Record.METRICS]
    partial = bool(cfg.get(TrainConfig.PARTIAL_UPDATES))
    vector = secure_partial_vector(names, params, new) if partial else [new[k] for k in names]
    return legacy_fitres(vector, int(metrics[Metric.NUM_EXAMPLES]))  # type: ignore[arg-type]


def secure_partial_vector(
    names: list[str],
    received: Mapping[str, np.ndarray[Any, Any]],
    trained: Mapping[str, np.ndarray[Any, Any]],
) -> list[np.ndarray[Any, Any]]:
    """A light-scope reply SecAgg+ can sum: every tensor in ``names`` order, zeros where this
    device did not train, then one 0/1 weight per tensor (1 where it trained).

    SecAgg+ sums fixed-length vectors, each already multiplied by its device's example count
    (``secaggplus_mod``), and must not tell the server which tensors a device trained: a
    partial reply would change the vector's length, and whole models would pull untrained
    tensors back to the old model. The server divides the two secure sums tensor by tensor
    (:func:`edgefleet.flower.secagg.holders_mean`): each tensor is averaged over the devices
    that trained it, and one nobody trained keeps its global value.
    """
    tensors = [
        np.asarray(trained[k], np.float32) if k in trained else np.zeros_like(received[k])
        for k in names
    ]
    weights = np.asarray([1.0 if k in trained else 0.0 for k in names], np.float32)
    return [*tensors, weights]


def legacy_fitres(tensors: list[np.ndarray[Any, Any]], num_examples: int) -> RecordDict:
    """The legacy FitRes record ``secaggplus_mod`` masks before it leaves the device."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(tensors), num_examples, {})
    return compat.fitres_to_recorddict(fitres, keep_input=True)


def fine_tune(
    params: dict[str, np.ndarray[Any, Any]], cfg: ConfigRecord, context: Context
) -> RecordDict:
    """The train reply's content for ``params`` under the round's config ``cfg``."""
    if cfg.get(TrainConfig.ARCH) == LORA_ARCH:  # the params are adapters of the device's LM
        from edgefleet.agent.fl.lora_client import lora_fine_tune

        return lora_fine_tune(params, cfg, context)
    t0 = time.perf_counter()
    arch = str(cfg.get(TrainConfig.ARCH, "mlp"))
    epochs = int(_num(cfg, TrainConfig.LOCAL_EPOCHS, 1))
    batch = int(_num(cfg, TrainConfig.BATCH_SIZE, 32))
    lr = _num(cfg, TrainConfig.LR, 0.05)
    mu = _num(cfg, TrainConfig.PROXIMAL_MU, 0.0)
    seed = int(_num(cfg, TrainConfig.SERVER_ROUND, 0)) * 1000 + int(
        _num(context.node_config, Node.PARTITION_ID, 0)
    )
    ram = int(context.node_config.get(Node.RAM_BYTES, 0) or 0)
    budget = int(ram * _num(context.node_config, Node.BUDGET_FRACTION, DEFAULT_BUDGET_FRACTION))
    if arch == "mlp" and not context.node_config.get(Node.MLP_IN_WORKER):
        from edgefleet.fl import mlp_numpy

        shard = local_shard(context, cfg)
        batch = _mlp_batch(params, batch, budget)
        pre_loss, pre_acc = mlp_numpy.evaluate(params, shard.x_eval, shard.y_eval)
        new, train_loss = mlp_numpy.train(
            params, shard.x_train, shard.y_train, epochs=epochs, batch_size=batch, lr=lr,
            proximal_mu=mu, seed=seed,
        )  # fmt: skip
        post_loss, post_acc = mlp_numpy.evaluate(new, shard.x_eval, shard.y_eval)
        trained_params = sum(int(v.size) for v in params.values())
        examples, eval_examples = len(shard.y_train), len(shard.y_eval)
    else:
        arch_cfg = json.loads(str(cfg.get(TrainConfig.ARCH_CONFIG, "{}")))
        hyper = {"epochs": epochs, "batch_size": batch, "lr": lr, "proximal_mu": mu,
                 "seed": seed, "budget": budget}  # fmt: skip
        fitted = _fit_torch(arch, arch_cfg, params, cfg, context, hyper)
        new, train_loss, batch = fitted.params, fitted.train_loss, fitted.batch_size
        (pre_loss, pre_acc), (post_loss, post_acc) = fitted.before, fitted.after
        trained_params = fitted.trained_params
        examples, eval_examples = fitted.num_examples, fitted.eval_examples
    new = reply_tensors(params, new, partial=bool(cfg.get(TrainConfig.PARTIAL_UPDATES)))
    delay = _num(context.node_config, Node.SIM_DELAY, 0.0)
    if delay > 0:
        time.sleep(delay)  # a simulated slow device (benchmarks of asynchronous rounds)
    reply_arrays, residual_norm = _encode_update(params, new, cfg, context)
    metrics = MetricRecord(
        {
            Metric.CODEC_RESIDUAL: residual_norm,
            Metric.NUM_EXAMPLES: examples,
            Metric.TRAIN_LOSS: train_loss,
            Metric.EVAL_LOSS: pre_loss,
            Metric.EVAL_ACC: pre_acc,
            Metric.LOCAL_EVAL_LOSS: post_loss,
            Metric.LOCAL_EVAL_ACC: post_acc,
            Metric.EVAL_EXAMPLES: eval_examples,
            Metric.BATCH_SIZE: batch,
            Metric.TRAINED_PARAMS: trained_params,
            Metric.CLIENT_SECONDS: time.perf_counter() - t0,
        }
    )
    return RecordDict({Record.ARRAYS: reply_arrays, Record.METRICS: metrics})


#: the node's context-state record where the ClientApp notes it fell back (log once per run)
WORKER_STATE = "train-worker"


def _worker(context: Context) -> Any:
    """A client of the device's training worker when one is named and answers, else None.

    The worker must serve this node's shard (it reports its data path); a silent or
    mismatched worker means in-process training, said once per run in the node's log.
    """
    path = str(context.node_config.get(Node.TRAIN_WORKER, "") or "")
    if not path:
        return None
    from edgefleet.agent.fl.train_worker_client import TrainWorkerClient, WorkerUnavailable

    client = TrainWorkerClient(path)
    try:
        health = client.health()
        data = str(context.node_config.get(Node.DATA_PATH, ""))
        if not _same_file(health.data_path, data):
            raise WorkerUnavailable(f"the worker trains on {health.data_path}, not {data}")
    except WorkerUnavailable as exc:
        client.close()
        _fell_back(context, str(exc))
        return None
    return client


def _same_file(a: str, b: str) -> bool:
    import os

    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing: no shard to share
        return False


def _fell_back(context: Context, why: str) -> None:
    state = context.state.config_records.get(WORKER_STATE)
    if state is not None and state.get("fell-back"):
        return
    from logging import WARNING

    from flwr.common.logger import log

    log(WARNING, "training in-process (torch imported per message): %s", why)
    context.state.config_records[WORKER_STATE] = ConfigRecord({"fell-back": True})


def _fit_torch(
    arch: str,
    arch_cfg: dict[str, Any],
    params: dict[str, np.ndarray[Any, Any]],
    cfg: ConfigRecord,
    context: Context,
    hyper: dict[str, Any],
) -> Any:
    """A round's torch training: in the device's worker when it answers, else in-process.

    Both run :func:`edgefleet.agent.fl.torch_train.fit` (same plan, scopes and trained keys);
    returns a :class:`~edgefleet.agent.fl.train_worker_client.WorkerFit`.
    """
    from edgefleet.agent.fl.train_worker_client import WorkerFit, WorkerUnavailable

    frontend = str(cfg.get(TrainConfig.FRONTEND, "") or "")
    client = _worker(context)
    if client is not None:
        with client:
            try:
                return client.fit(arch, arch_cfg, frontend, params, **hyper)
            except WorkerUnavailable as exc:  # it died mid-round: this round trains here
                _fell_back(context, str(exc))
    from edgefleet.agent.fl.torch_train import fit

    shard = local_shard(context, cfg)
    fitted = fit(arch, arch_cfg, params, shard, **hyper)
    return WorkerFit(
        params=fitted.params, train_loss=fitted.train_loss, before=fitted.before,
        after=fitted.after, scope=fitted.scope, batch_size=fitted.batch_size,
        trained_params=fitted.trained_params, num_examples=len(shard.y_train),
        eval_examples=len(shard.y_eval),
    )  # fmt: skip


def _score_torch(
    arch: str, arch_cfg: dict[str, Any], params: dict[str, np.ndarray[Any, Any]],
    cfg: ConfigRecord, context: Context,
) -> tuple[float, float, int]:  # fmt: skip
    """(loss, accuracy, examples) of a conv net on the held-out part: worker, else here."""
    from edgefleet.agent.fl.train_worker_client import WorkerUnavailable

    client = _worker(context)
    if client is not None:
        with client:
            try:
                return client.evaluate(  # type: ignore[no-any-return]
                    arch, arch_cfg, str(cfg.get(TrainConfig.FRONTEND, "") or ""), params
                )
            except WorkerUnavailable as exc:
                _fell_back(context, str(exc))
    from edgefleet.agent.fl.torch_train import score

    shard = local_shard(context, cfg)
    loss, acc = score(arch, arch_cfg, params, shard)
    return loss, acc, len(shard.y_eval)


def reply_tensors(
    received: Mapping[str, np.ndarray[Any, Any]],
    trained: Mapping[str, np.ndarray[Any, Any]],
    *,
    partial: bool,
) -> dict[str, np.ndarray[Any, Any]]:
    """What the reply carries, in the order received: only the trained tensors when the server
    takes partial updates, else the whole model with the untrained tensors as received (Flower's
    own DP wrappers and SecAgg+ work on whole models; ours take partial replies)."""
    if partial:
        return {k: trained[k] for k in received if k in trained}
    return {k: trained.get(k, v) for k, v in received.items()}


def _mlp_batch(params: Mapping[str, np.ndarray[Any, Any]], batch: int, budget: int) -> int:
    """The numpy MLP's batch under ``budget``: halved until it fits (it has no light scope)."""
    num_params = sum(int(v.size) for v in params.values())
    widest = widest_activation(v.shape for v in params.values())
    while budget and batch > 1 and training_bytes(num_params, batch, widest) > budget:
        batch //= 2  # shrink the batch before giving up: memory, not data, is the limit
    if budget and training_bytes(num_params, batch, widest) > budget:
        raise MemoryError(
            f"training {num_params} params needs {training_bytes(num_params, 1, widest)} B, "
            f"budget is {budget} B"
        )
    return batch


#: the device's error-feedback residual between rounds, in the node's Flower context state
RESIDUAL_RECORD = "update-codec-residual"


def _encode_update(
    received: dict[str, np.ndarray[Any, Any]],
    trained: dict[str, np.ndarray[Any, Any]],
    cfg: Mapping[str, object],
    context: Context,
) -> tuple[ArrayRecord, float]:
    """The reply's arrays: the model itself, or its encoded delta with error feedback.

    The residual (what encoding lost) stays on the device, in the context state the SuperNode
    keeps for the run between this process and the next round's; returns its norm as it was
    carried into this update.
    """
    from edgefleet.fl.update_codec import encode, parse_codec

    codec = parse_codec(str(cfg.get(TrainConfig.UPDATE_CODEC, "none") or "none"))
    if not codec.lossy:
        return _record(trained), 0.0
    carried = context.state.array_records.get(RESIDUAL_RECORD)
    residual = _arrays(carried) if carried is not None else {}
    delta = {k: trained[k] - received[k] for k in trained}
    encoded, new_residual = encode(delta, codec, residual)
    context.state.array_records[RESIDUAL_RECORD] = _record(new_residual)
    norm = float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in residual.values())))
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in encoded.items()}), norm


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received model on the local held-out data (used once after the last round)."""
    from edgefleet.fl import mlp_numpy

    cfg = msg.content.config_records.get(Record.CONFIG, ConfigRecord())
    params = _arrays(_model_record(msg, cfg, context))
    if cfg.get(TrainConfig.ARCH) == LORA_ARCH:
        from edgefleet.agent.fl.lora_client import lora_evaluate

        return Message(lora_evaluate(params, cfg, context), reply_to=msg)
    arch = str(cfg.get(TrainConfig.ARCH, "mlp"))
    if arch == "mlp" and not context.node_config.get(Node.MLP_IN_WORKER):
        shard = local_shard(context, cfg)
        loss, acc = mlp_numpy.evaluate(params, shard.x_eval, shard.y_eval)
        examples = len(shard.y_eval)
    else:
        arch_cfg = json.loads(str(cfg.get(TrainConfig.ARCH_CONFIG, "{}")))
        loss, acc, examples = _score_torch(arch, arch_cfg, params, cfg, context)
    metrics = MetricRecord(
        {Metric.NUM_EXAMPLES: examples, Metric.EVAL_LOSS: loss, Metric.EVAL_ACC: acc}
    )
    return Message(RecordDict({Record.METRICS: metrics}), reply_to=msg)
