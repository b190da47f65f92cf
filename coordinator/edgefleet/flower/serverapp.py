"""Our Flower ServerApp: select participants, drive rounds fast, aggregate heterogeneous widths.

What Flower gives us and we reuse: transport, node liveness, ``FedAvg``/``FedProx`` and the
DP wrappers from ``flwr.serverapp.strategy`` (their ``configure_train``/``aggregate_train``/
``configure_evaluate``). One round loop drives every strategy through that interface. What we
add:

* **Selection.** Before the first round every node is asked (``query`` message) for its
  facts -- device id, profile, RAM, battery, health, labels -- which its SuperNode's
  ``node_config`` carries; a selection expression (:mod:`edgefleet.selectors`) keeps the
  eligible ones. Flower's own samplers then only ever see those nodes (:class:`SelectedGrid`).
* **Heterogeneous aggregation** (``strategy=heterofl``): each device gets the width that
  fits its memory budget, trains the leading slice of the global model, and slices are merged
  element-wise -- a Flower strategy of its own (:class:`edgefleet.flower.strategies.HeteroFL`,
  the math in :mod:`edgefleet.flower.heterofl`).
* **A short-poll round driver.** ``Grid.send_and_receive`` sleeps 3 s between pulls; we push
  with ``grid.push_messages`` and pull every ``poll-interval`` (50 ms), and the ClientApp folds
  evaluation into its train reply, so a round is one message exchange, not two.
* **A record per round** (participants, loss, accuracy, seconds) written atomically to
  ``out-dir/progress.json`` after every round, which the CLI and the coordinator read.

* **Other round shapes** beside this loop: asynchronous buffered aggregation
  (``strategy=fedbuff``, :mod:`edgefleet.flower.fedbuff`), Flower's SecAgg+ (``secure-agg``,
  :mod:`edgefleet.flower.secagg`), and compressed updates (``update-codec``,
  :mod:`edgefleet.flower.updates`), each a module of its own called from here.

The node-config keys, record names and config/metric keys shared with the ClientApp are in
:mod:`edgefleet.fl.contract`.

Size: over 500 lines because the run settings, their validation, participant selection and
the synchronous round loop read best together -- they are one run's life from config to
``final.npz``; every other round shape lives in its own module.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as fl_strategy

from edgefleet.fl.contract import Metric, NodeFacts, Record, TrainConfig
from edgefleet.fl.redis_secret import with_credentials
from edgefleet.fl.update_codec import parse_codec
from edgefleet.flower import model as fl_model
from edgefleet.flower import updates
from edgefleet.flower.grid_io import exchange, per_device_metric, weighted_metric
from edgefleet.flower.run_settings import STRATEGIES, RunSettings
from edgefleet.flower.strategies import (
    HeteroFL,
    PartialClientSideFixedClipping,
    PartialFedAvg,
    PartialFedProx,
    PartialServerSideFixedClipping,
    arrays_of,
    to_record,
)
from edgefleet.fsutil import atomic_write
from edgefleet.selectors import parse_selection

__all__ = [
    "STRATEGIES",
    "RunSettings",
    "SelectedGrid",
    "app",
    "device_facts",
    "exchange",
    "pick_width",
    "run_rounds",
]

log = logging.getLogger(__name__)
app = ServerApp()
WIDTHS = (1.0, 0.5, 0.25)


class SelectedGrid(Grid):
    """A view of a Grid that only shows the selected nodes, so Flower's samplers respect
    our selection; ``send_and_receive`` polls at our short interval instead of every 3 s."""

    def __init__(self, grid: Grid, node_ids: Iterable[int], poll_interval: float = 0.05) -> None:
        self._grid = grid
        self.node_ids = list(node_ids)
        self.poll_interval = poll_interval

    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:  # fmt: skip
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        online = set(self._grid.get_node_ids())
        return [n for n in self.node_ids if n in online]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return exchange(self._grid, list(messages), timeout or 3600.0, self.poll_interval)


def device_facts(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise a node's reported ``node_config`` facts to the selection vocabulary."""
    return NodeFacts.from_node_config(raw).selection_view()


def pick_width(
    facts: Mapping[str, Any], arch: str, budget_fraction: float, override: str = ""
) -> float | None:
    """The widest model whose fine-tuning fits the device's RAM budget (None: none fits)."""
    from edgefleet.fl.budget import training_bytes, widest_activation

    if facts.get("width"):
        return float(facts["width"])
    budget = float(facts.get("ram") or 0) * budget_fraction
    for width in WIDTHS:
        shp = fl_model.shapes(arch, width, override)
        n = sum(int(np.prod(s)) for s in shp.values())
        widest = widest_activation(shp.values())
        if not budget or training_bytes(n, 8, widest) <= budget:
            return width
    return None


class _Recorder:
    """Round records written atomically so a reader never sees half a file."""

    def __init__(self, out_dir: str, settings: RunSettings) -> None:
        self.dir = Path(out_dir) if out_dir else None
        self.doc: dict[str, Any] = {
            "state": "running", "settings": asdict(settings), "rounds": [], "devices": {},
            "started": time.time(), "pid": os.getpid(),
        }  # fmt: skip
        self.fleet: Any = None  # a run_store.RunStore when the run config names the fleet state
        if settings.redis_url and settings.run_name:
            from edgefleet.flower.run_store import RunStore

            self.fleet = RunStore(settings.redis_url, settings.run_name)

    def write(self, **update: Any) -> None:
        self.doc.update(update)
        if self.fleet is not None:
            self.fleet.write(self.doc)
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / "progress.json", json.dumps(self.doc, indent=1, default=str))


def _strategy(
    settings: RunSettings, widths: Mapping[int, float], n_selected: int
) -> fl_strategy.Strategy:
    """HeteroFL, or Flower's FedAvg/FedProx taking partial replies, optionally DP-wrapped.

    Availability is the round loop's to check (it fails a round rather than wait), so no
    strategy waits for nodes: ``min_available_nodes`` and ``min_evaluate_nodes`` are 0 and the
    final evaluation goes to every selected node still online.
    """
    fraction_evaluate = 1.0 if settings.final_evaluate else 0.0
    if settings.strategy in ("heterofl", "fedbuff"):  # fedbuff evaluates through it
        return HeteroFL(
            widths, settings.arch, settings.arch_config, fraction_train=settings.fraction_train,
            fraction_evaluate=fraction_evaluate, min_train_nodes=settings.min_devices,
        )  # fmt: skip
    common: dict[str, Any] = {
        "fraction_train": settings.fraction_train, "fraction_evaluate": fraction_evaluate,
        "min_train_nodes": settings.min_devices, "min_evaluate_nodes": 0,
        "min_available_nodes": 0, "weighted_by_key": Metric.NUM_EXAMPLES,
        "arrayrecord_key": Record.ARRAYS, "configrecord_key": Record.CONFIG,
    }  # fmt: skip
    # light-scope (partial) replies in every mode: the base tells devices they are welcome;
    # client-side DP devices clip with the untrained tensors' zero delta in, server-side DP
    # clips each reply over the tensors it sent; both scale the noise per tensor's holders.
    base: fl_strategy.Strategy = (
        PartialFedProx(proximal_mu=settings.proximal_mu, **common)
        if settings.strategy == "fedprox"
        else PartialFedAvg(**common)
    )
    sampled = max(settings.min_devices, int(n_selected * settings.fraction_train))
    if settings.dp == "server-fixed":
        return PartialServerSideFixedClipping(base, settings.dp_noise, settings.dp_clip, sampled)
    if settings.dp == "client-fixed":
        return PartialClientSideFixedClipping(base, settings.dp_noise, settings.dp_clip, sampled)
    return base


def run_rounds(grid: Grid, settings: RunSettings) -> dict[str, Any]:
    """The whole run: wait for devices, select, ``num_rounds`` rounds, final evaluation."""
    rec = _Recorder(settings.out_dir, settings)
    rec.write()
    try:
        return _run(grid, settings, rec)
    except Exception as exc:
        rec.write(state="failed", reason=f"{type(exc).__name__}: {exc}", finished=time.time())
        raise
    finally:
        if rec.fleet is not None:
            rec.fleet.close()


def _run(grid: Grid, settings: RunSettings, rec: _Recorder) -> dict[str, Any]:
    selection = parse_selection(settings.select)
    from edgefleet.flower import lora_run

    if lora_run.needs_preparing(settings):  # LoRA over the API: the base from the store
        lora_run.prepare(settings)
        rec.write(settings=asdict(settings))
    deadline = time.monotonic() + settings.node_wait_timeout
    while len(list(grid.get_node_ids())) < settings.min_devices:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {settings.min_devices} SuperNodes connected")
        time.sleep(0.2)

    # Ask every node for its facts once per run (Flower knows node ids only).
    nodes = list(grid.get_node_ids())
    queries = [
        Message(lora_run.query_content(settings), dst_node_id=n, message_type=MessageType.QUERY)
        for n in nodes
    ]
    facts: dict[int, dict[str, Any]] = {}
    lacking_base: list[int] = []  # a LoRA run: devices whose base cache lacks the run's base
    left_out: dict[int, str] = {}  # devices that said they cannot take part, and why
    # as long as nodes may take to connect: a loaded device starts its ClientApp slowly
    for reply in exchange(
        grid, queries, max(60.0, settings.node_wait_timeout), settings.poll_interval
    ):
        if reply.has_error():
            continue
        raw = dict(reply.content.config_records.get(Record.FACTS, ConfigRecord()))
        facts[reply.metadata.src_node_id] = device_facts(raw)
        if Record.LM_LORA_UNFIT in raw:  # cannot train the run's LoRA: no base, no rounds
            left_out[reply.metadata.src_node_id] = str(raw[Record.LM_LORA_UNFIT])
        elif raw.get(Record.LM_BASE_STATE) == "missing":
            lacking_base.append(reply.metadata.src_node_id)
    selected = [
        n for n in nodes if n in facts and n not in left_out and selection.matches(facts[n])
    ]
    if left_out:
        log.info("left out of the run: %s", {facts[n]["device"]: w for n, w in left_out.items()})
    widths: dict[int, float] = {}
    if settings.strategy in ("heterofl", "fedbuff"):
        for n in list(selected):
            w = pick_width(facts[n], settings.arch, settings.budget_fraction, settings.arch_config)
            if w is None:
                selected.remove(n)  # cannot hold even the narrowest slice
            else:
                widths[n] = w
    rec.write(
        devices={
            str(n): {**f, "selected": n in selected, "width": widths.get(n, 1.0)}
            for n, f in facts.items()
        },
        left_out={facts[n]["device"]: why for n, why in left_out.items()},
    )
    if len(selected) < settings.min_devices:
        raise RuntimeError(
            f"only {len(selected)} device(s) match {settings.select or 'the run'} "
            f"(of {len(facts)} answering); --min-devices is {settings.min_devices}"
        )

    uploaded = rec.fleet.initial_weights() if rec.fleet is not None else None
    params = (
        uploaded
        if uploaded is not None
        else fl_model.load_params(settings.init_path)
        if settings.init_path
        else fl_model.initial_params(
            settings.arch, seed=settings.seed, override=settings.arch_config
        )
    )
    test = np.load(settings.test_path) if settings.test_path else None

    def test_score(p: Mapping[str, Any]) -> tuple[float, float] | tuple[None, None]:
        if test is None:
            return None, None
        return fl_model.score(settings.arch, dict(p), test["x"], test["y"], settings.arch_config)

    initial_loss, initial_acc = test_score(params)
    rec.write(initial={"test_loss": initial_loss, "test_acc": initial_acc})
    view = SelectedGrid(grid, selected, settings.poll_interval)
    base_sender = lora_run.BaseSender(settings, lacking_base)
    strategy = _strategy(settings, widths, len(selected))
    arrays = to_record(params)
    full_width = json.dumps(fl_model.arch_config(settings.arch, 1.0, settings.arch_config))
    codec = parse_codec(settings.update_codec)
    sync_rounds = settings.num_rounds
    if settings.strategy == "fedbuff":
        from edgefleet.flower.fedbuff import run_buffered

        params = run_buffered(grid, view, settings, params, facts, widths, test_score, rec)
        arrays, sync_rounds = to_record(params), 0

    for rnd in range(1, sync_rounds + 1):
        t0 = time.monotonic()
        online = list(view.get_node_ids())
        if len(online) < settings.min_devices:
            # Flower's samplers would wait (forever) for enough nodes; a round must not hang.
            raise RuntimeError(
                f"round {rnd}: {len(online)} selected device(s) online, "
                f"min-devices is {settings.min_devices}"
            )
        config = ConfigRecord(
            {
                TrainConfig.ARCH: settings.arch, TrainConfig.ARCH_CONFIG: full_width,
                TrainConfig.FRONTEND: settings.frontend, TrainConfig.LR: settings.lr,
                TrainConfig.LOCAL_EPOCHS: settings.local_epochs,
                TrainConfig.BATCH_SIZE: settings.batch_size, TrainConfig.SERVER_ROUND: rnd,
                TrainConfig.PROXIMAL_MU: (
                    settings.proximal_mu if settings.strategy == "fedprox" else 0.0
                ),
                TrainConfig.UPDATE_CODEC: str(codec),
            }
        )  # fmt: skip
        if settings.secure_agg:
            from edgefleet.flower.secagg import run_secure_round

            params, secured = run_secure_round(
                view, settings, rnd, params, dict(config), facts, test_score, t0
            )
            arrays = to_record(params)
            rec.doc["rounds"].append(secured)
            rec.write()
            continue
        messages = list(strategy.configure_train(rnd, arrays, config, view))
        base_sent = base_sender.attach(messages)  # once per device lacking a LoRA run's base
        replies = exchange(grid, messages, settings.round_timeout, settings.poll_interval)
        base_sender.delivered(replies)
        ok = [r for r in replies if not r.has_error()]
        bytes_up, bytes_down = updates.wire_bytes(ok), updates.wire_bytes(messages)
        ok = updates.restore(messages, ok, codec)  # encoded deltas -> the models they stand for
        failed = len(messages) - len(ok)
        if len(ok) < settings.min_devices:
            reasons = sorted({str(r.error.reason)[:200] for r in replies if r.has_error()})
            raise RuntimeError(
                f"round {rnd}: {len(ok)} of {len(messages)} devices replied "
                f"(min-devices {settings.min_devices})"
                + (f"; errors: {'; '.join(reasons[:2])}" if reasons else "")
            )
        aggregated, _ = strategy.aggregate_train(rnd, ok)
        if aggregated is not None:
            params = arrays_of(aggregated)  # float32, whatever a DP wrapper's noise made it
            arrays = to_record(params)
        test_loss, test_acc = test_score(params)
        round_doc = {
            "round": rnd,
            "participants": [facts[r.metadata.src_node_id]["device"] for r in ok],
            "failed": failed,
            # why devices failed (Flower's error replies), so a failed round says why
            "errors": sorted({str(r.error.reason)[:200] for r in replies if r.has_error()})[:3],
            "train_loss": weighted_metric(ok, Metric.TRAIN_LOSS, Metric.NUM_EXAMPLES),
            # the global model of the previous round, scored on each client's held-out data
            "client_eval_acc": weighted_metric(ok, Metric.EVAL_ACC, Metric.EVAL_EXAMPLES),
            "client_local_acc": weighted_metric(ok, Metric.LOCAL_EVAL_ACC, Metric.EVAL_EXAMPLES),
            # per device: personalization is measured device by device, not only on average
            "device_eval_acc": per_device_metric(ok, facts, Metric.EVAL_ACC),
            # ... and its held-out loss (a language model's perplexity is exp of it)
            "device_eval_loss": per_device_metric(ok, facts, Metric.EVAL_LOSS),
            # fewer than the model's on a device whose budget chose a light scope (TinyTL ...)
            "device_trained_params": per_device_metric(ok, facts, Metric.TRAINED_PARAMS),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "seconds": time.monotonic() - t0,
            "ended": time.time(),
            "codec": str(codec),
            "codec_residual": weighted_metric(ok, Metric.CODEC_RESIDUAL, Metric.NUM_EXAMPLES),
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            # of bytes_down: the LoRA base sent to devices that lacked it (once per device)
            "base_bytes": {facts[n]["device"]: b for n, b in base_sent.items()},
        }
        rec.doc["rounds"].append(round_doc)
        rec.write()
        log.info("round %s: %s", rnd, round_doc)

    final: dict[str, Any] = {"test_loss": None, "test_acc": None, "client_eval_acc": None}
    final["test_loss"], final["test_acc"] = test_score(params)
    if settings.final_evaluate:
        # every selected node still online scores the final model (its own slice under HeteroFL)
        config = ConfigRecord(
            {
                TrainConfig.ARCH: settings.arch,
                TrainConfig.ARCH_CONFIG: full_width,
                TrainConfig.FRONTEND: settings.frontend,
            }
        )
        messages = list(strategy.configure_evaluate(settings.num_rounds, arrays, config, view))
        final["base_bytes"] = {
            facts[n]["device"]: b for n, b in base_sender.attach(messages).items()
        }
        replies = [
            r
            for r in exchange(grid, messages, settings.round_timeout, settings.poll_interval)
            if not r.has_error()
        ]
        final["client_eval_acc"] = weighted_metric(replies, Metric.EVAL_ACC, Metric.NUM_EXAMPLES)
        final["device_eval_acc"] = per_device_metric(replies, facts, Metric.EVAL_ACC)
        final["device_eval_loss"] = per_device_metric(replies, facts, Metric.EVAL_LOSS)
    if rec.dir is not None:
        fl_model.save_params(params, rec.dir / "final.npz")
    if settings.register_model:
        from edgefleet.flower.run_publish import register_result

        rec.write(state="running", phase="registering")
        if settings.arch == lora_run.LORA_ARCH:
            rec.doc.update(lora_run.register_lora(params, settings))
        else:
            rec.doc.update(register_result(
                params, settings.arch, settings.register_model, settings.store_dir,
                with_credentials(settings.store_redis, os.environ), settings.signing_key,
            ))  # fmt: skip
    rec.write(state="succeeded", final=final, finished=time.time())
    return rec.doc


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point Flower calls in the ``flwr-serverapp`` process."""
    settings = RunSettings.from_run_config(dict(context.run_config))
    run_rounds(grid, settings)
