"""Federated runs as the API serves them: submit to the fleet's SuperLink, read back from Redis.

Why the replica submits (issue 18): ``train start`` used to need Flower, the coordinator's data
dir (``coordinator.json``) and a run directory on the SuperLink's host. Now the CLI sends the
run's settings to any replica, which writes the Flower App, submits it to the fleet's SuperLink
(named in Redis by the replica that supervises it, or configured as external) and records the
run in Redis. From then on the ServerApp writes its own record there (``flower.run_store``), so
any replica answers ``GetRun``/``WatchRun``/``ListRuns``/``StopRun`` for any run, and a replica
killed after submitting loses nothing.

Plain types in and out (the API package converts them); Flower runs as the ``flwr`` CLI in a
subprocess (``fl.superlink``), never imported here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgefleet.coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.coordinator.state.fl_runs import StoredRun
from edgefleet.coordinator.state.store import FleetStore
from edgefleet.fl.contract import LORA_ARCH
from edgefleet.fl.redis_secret import strip_credentials
from edgefleet.fl.update_codec import parse_codec
from edgefleet.selectors import parse_selection

#: what the federated app trains (``edgefleet.flower.model``; the CLI's ``train_validate.MODELS``)
MODELS = ("mlp", "ds-cnn", "resnet-8")
#: ``edgefleet.flower.serverapp.STRATEGIES`` (not imported: the server runs no Flower code)
STRATEGIES = ("fedavg", "fedprox", "heterofl", "fedbuff")
#: the CLI's ``train_validate.DP_MODES`` (a test keeps all three equal)
DP_MODES = ("none", "server-fixed", "client-fixed")
FINISHED = ("succeeded", "failed", "stopped")
MAX_ROUNDS = 10_000
#: the CLI's ``train_validate.SECURE_AGG_MIN_DEVICES`` (why: there)
SECURE_AGG_MIN_DEVICES = 3
MAX_INIT_BYTES = 3 * 1024 * 1024  # under the 4 MiB gRPC message limit
#: ``edgefleet.lora.LORA_TARGETS`` (the server imports no torch; a test keeps them equal)
LORA_TARGETS = ("q", "k", "v", "proj", "up", "down")
#: a run's learning rate when the request leaves it 0: a classifier's SGD, LoRA's AdamW
DEFAULT_LR, LORA_LR = 0.05, 5e-3
#: federated LoRA's defaults (the CLI's ``train_validate.LORA_*``)
LORA_RANK, LORA_ALPHA, LORA_TARGETS_DEFAULT, LORA_STEPS = 8, 16.0, ("q", "v"), 20
MAX_LORA_RANK, MAX_LORA_STEPS = 1024, 100_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RunRequest:
    """``StartRun``'s settings (the CLI's ``train start`` options, as sent)."""

    model: str
    rounds: int = 3
    strategy: str = "fedavg"
    min_devices: int = 2
    select: str = ""
    lr: float = 0.05
    local_epochs: int = 1
    proximal_mu: float = 0.01
    dp: str = "none"
    dp_noise: float = 0.0
    dp_clip: float = 10.0
    round_timeout: float = 120.0
    name: str = ""
    register: bool = False
    init_weights: bytes = b""
    buffer: int = 4
    max_staleness: int = 4
    update_codec: str = "none"
    #: Flower's SecAgg+ for every round (``edgefleet.flower.secagg``)
    secure_agg: bool = False
    #: a registered language model: federated LoRA (0 / empty: the defaults)
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_targets: tuple[str, ...] = ()
    lora_steps: int = 0

    @property
    def lora_given(self) -> bool:
        return bool(self.lora_rank or self.lora_alpha or self.lora_targets or self.lora_steps)


@dataclass(frozen=True)
class RunView:
    """A run as every replica reports it: the replica's meta under the ServerApp's record."""

    name: str
    state: str
    reason: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return list(self.record.get("rounds") or [])

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(frozen=True)
class SuperLinkTarget:
    """Where runs are submitted: the fleet's SuperLink and the CA to verify it (None: plaintext)."""

    address: str
    ca: Path | None


def view_of(run: StoredRun) -> RunView:
    """Merge what the replica and the ServerApp wrote, and decide the run's state.

    A ``running`` record whose ServerApp stopped renewing its ``alive`` key failed (the
    SuperLink or its host died); this check works from any host, unlike a pid.
    """
    record: dict[str, Any] = {**run.meta, **run.progress, "name": run.name}
    state = str(run.progress.get("state") or run.meta.get("state") or "submitted")
    reason = str(run.progress.get("reason") or run.meta.get("reason") or "")
    if run.stopped:
        state, reason = "stopped", reason or "stopped by an operator"
    elif state == "running" and not run.alive:
        state = "failed"
        reason = "the ServerApp stopped reporting (its SuperLink or host restarted or was killed)"
    record["state"], record["reason"] = state, reason or None
    return RunView(run.name, state, reason, record)


class TrainingRuns:
    """Start, read, watch and stop the fleet's federated runs."""

    def __init__(
        self,
        store: FleetStore,
        work_dir: Path,
        redis_url: str,
        target: Callable[[], SuperLinkTarget | None],
        store_config: dict[str, str] | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        """``work_dir``: where this replica writes Flower Apps it submits (its data dir's
        ``fl-submit``); ``redis_url``: the fleet state the ServerApp records into, as a
        SuperLink's host reaches it (its credentials never enter a run config: the SuperLink's
        ServerApps get them from their environment); ``target``: the fleet's SuperLink now;
        ``store_config``:
        where the ServerApp registers a result (``store-dir``, ``store-redis``, ``signing-key``
        run-config keys, see ``flower.run_publish``)."""
        self._store = store
        self._work = work_dir
        self._redis_url = redis_url
        self._target = target
        self.poll_interval = poll_interval
        self._store_config = dict(store_config or {})

    async def start(self, req: RunRequest) -> RunView:
        lm = req.model not in MODELS and await asyncio.to_thread(self._is_language_model, req)
        req = replace(req, lr=req.lr or (LORA_LR if lm else DEFAULT_LR))
        if lm:
            _check_lora(req)
        else:
            _check(req)
        target = self._target()
        if target is None:
            raise FailedPrecondition(
                "the fleet has no SuperLink (start the coordinator with --superlink local or "
                "--superlink HOST:PORT)"
            )
        name = req.name or f"{req.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        meta: dict[str, Any] = {
            "state": "submitted", "model": req.model, "superlink": target.address,
            "register": req.register,
            "settings": {"num_rounds": req.rounds, "strategy": req.strategy, "arch": req.model},
        }  # fmt: skip
        if not await self._store.create_run(name, meta, time.time()):
            raise InvalidArgument("name", f"a run named {name!r} exists already")
        if req.init_weights:
            await self._store.put_run_blob(
                name, "init", base64.b64encode(req.init_weights).decode()
            )
        config: dict[str, object] = {
            "num-rounds": req.rounds, "strategy": req.strategy, "min-devices": req.min_devices,
            "select": req.select, "arch": req.model, "lr": req.lr,
            "local-epochs": req.local_epochs, "proximal-mu": req.proximal_mu, "dp": req.dp,
            "dp-noise": req.dp_noise, "dp-clip": req.dp_clip,
            "round-timeout": req.round_timeout, "run-name": name,
            # no password in what the SuperLink stores: the ServerApp reads it from its
            # environment (edgefleet.fl.redis_secret)
            "redis-url": strip_credentials(self._redis_url),
            "buffer": req.buffer, "max-staleness": req.max_staleness,
            "update-codec": req.update_codec, "secure-agg": req.secure_agg,
        }  # fmt: skip
        if lm:
            config.update(_lora_config(req))
            meta["settings"]["arch"] = LORA_ARCH
        if req.register or lm:  # a registered model's result is always registered
            meta["new_model"] = config["register-model"] = f"{req.model}-ft-{name}"
            config.update(self._store_config)
            config["store-redis"] = strip_credentials(str(config.get("store-redis") or ""))
        try:
            run_id = await asyncio.to_thread(self._submit, name, config, target)
        except (OSError, RuntimeError) as exc:
            meta.update(state="failed", reason=f"submission failed: {exc}")
            await self._store.update_run_meta(name, meta)
            raise FailedPrecondition(
                f"the SuperLink at {target.address} did not accept the run: {exc}"
            ) from None
        meta["flwr_run_id"] = run_id
        await self._store.update_run_meta(name, meta)
        return await self.get(name)

    def _is_language_model(self, req: RunRequest) -> bool:
        """Whether ``req.model`` is a registered byte-lm (read from the fleet's variant store
        index, as the ServerApp will open it); one line for anything else."""
        from edgefleet.coordinator.shared_store import open_store
        from edgefleet.variant_store import UnknownModelError

        cfg = self._store_config
        store = open_store(
            cfg.get("store-dir") or self._work / "store", cfg.get("store-redis") or None
        )
        store.materialize_datasets = False
        try:
            arch = store.model(req.model).architecture
        except UnknownModelError:
            raise InvalidArgument(
                "model",
                f"must be one of {', '.join(MODELS)} or a registered language model; "
                f"{req.model!r} is not registered",
            ) from None
        if str(arch.get("arch") or arch.get("name") or "") != "byte-lm":
            raise InvalidArgument(
                "model",
                f"must be one of {', '.join(MODELS)} or a registered language model "
                "(registered classifiers: not over the API yet)",
            )
        return True

    def _submit(self, name: str, config: dict[str, object], target: SuperLinkTarget) -> int:
        """Write the Flower App and ``flwr run`` it; the files are only needed for the call."""
        from edgefleet.coordinator.fl.superlink import submit, write_app

        self._work.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self._work))
        try:
            app = write_app(work / "app", config)
            return submit(app, work / "flwr-home", target.address, ca=target.ca)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    async def get(self, name: str) -> RunView:
        run = await self._store.get_run(name)
        if run is None:
            raise NotFound(f"no run {name!r}")
        return view_of(run)

    async def list(self) -> list[RunView]:
        views = []
        for name in await self._store.run_names():
            run = await self._store.get_run(name)
            if run is not None:
                views.append(view_of(run))
        return views

    async def watch(self, name: str) -> AsyncIterator[RunView]:
        """The run now, then each change (a round, the outcome), until it finishes."""
        last: tuple[str, int] | None = None
        while True:
            view = await self.get(name)
            key = (view.state, len(view.rounds))
            if key != last:
                last = key
                yield view
            if view.finished:
                return
            await asyncio.sleep(self.poll_interval)

    async def stop(self, name: str) -> RunView:
        view = await self.get(name)
        if view.finished:
            return view
        run_id = view.record.get("flwr_run_id")
        if run_id is None:
            raise FailedPrecondition(f"run {name!r} was never accepted by a SuperLink")
        target = self._target()
        address = str(view.record.get("superlink") or (target.address if target else ""))
        ca = target.ca if target is not None else None
        await asyncio.to_thread(self._stop, address, int(run_id), ca)
        await self._store.mark_run_stopped(name)
        return await self.get(name)

    def _stop(self, address: str, run_id: int, ca: Path | None) -> None:
        from edgefleet.coordinator.fl.superlink import stop_run

        self._work.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="stop-", dir=self._work))
        try:
            stop_run(home, address, run_id, ca)
        except RuntimeError as exc:
            raise FailedPrecondition(
                f"the SuperLink at {address} did not stop the run: {exc}"
            ) from None
        finally:
            shutil.rmtree(home, ignore_errors=True)


def _lora_config(req: RunRequest) -> dict[str, object]:
    """The run-config keys of a federated LoRA run of registered LM ``req.model``: the
    ServerApp recovers the base from the store, writes it and the initial adapters on its
    host and names them in ``arch-config`` (``edgefleet.flower.lora_run``)."""
    lora = {
        "rank": req.lora_rank or LORA_RANK,
        "alpha": req.lora_alpha or LORA_ALPHA,
        "targets": list(req.lora_targets or LORA_TARGETS_DEFAULT),
    }
    spec = {"model": req.model, "lora": lora, "steps": req.lora_steps or LORA_STEPS}
    return {
        "arch": LORA_ARCH, "arch-config": json.dumps(spec, sort_keys=True), "test-path": "",
        "batch-size": 8, "node-wait-timeout": max(60.0, req.round_timeout),
    }  # fmt: skip


def _check_lora(req: RunRequest) -> None:
    """A federated LoRA request: the numbers of any run, the LoRA settings, and what LoRA
    does not take (one line each, naming the field)."""
    _check(replace(req, model=MODELS[0], lora_rank=0, lora_alpha=0.0, lora_targets=(),
                   lora_steps=0))  # fmt: skip
    refused = [
        ("strategy", req.strategy != "fedavg", "it averages adapters with fedavg"),
        ("dp", req.dp != "none", "Flower's DP wrappers are wired for classifier runs"),
        ("update_codec", req.update_codec != "none", "adapters are already small"),
        ("secure_agg", req.secure_agg, "SecAgg+ is wired for classifier runs"),
        ("init_weights", bool(req.init_weights), "its adapters start at zero"),
    ]
    for field_name, is_bad, why in refused:
        if is_bad:
            raise InvalidArgument(field_name, f"does not apply to federated LoRA: {why}")
    if not 0 <= req.lora_rank <= MAX_LORA_RANK:
        raise InvalidArgument("lora_rank", f"must be 1..{MAX_LORA_RANK} (0 = {LORA_RANK})")
    if not math.isfinite(req.lora_alpha) or req.lora_alpha < 0:
        raise InvalidArgument("lora_alpha", f"must be a finite number > 0 (0 = {LORA_ALPHA:g})")
    bad = [t for t in req.lora_targets if t not in LORA_TARGETS]
    if bad or len(set(req.lora_targets)) != len(req.lora_targets):
        raise InvalidArgument(
            "lora_targets",
            f"distinct names among {', '.join(LORA_TARGETS)}, got {bad or 'a repeat'}",
        )
    if not 0 <= req.lora_steps <= MAX_LORA_STEPS:
        raise InvalidArgument("lora_steps", f"must be 1..{MAX_LORA_STEPS} (0 = {LORA_STEPS})")


def _check(req: RunRequest) -> None:
    """Refuse a bad request with the field it names, before anything is recorded."""
    if req.lora_given:
        raise InvalidArgument(
            "lora_rank", f"LoRA fine-tunes a registered language model; {req.model!r} is a "
            "classifier architecture"
        )  # fmt: skip
    if req.model not in MODELS:
        raise InvalidArgument(
            "model", f"must be one of {', '.join(MODELS)} (registered models: not over the API yet)"
        )
    if req.strategy not in STRATEGIES:
        raise InvalidArgument("strategy", f"must be one of {', '.join(STRATEGIES)}")
    if req.dp not in DP_MODES:
        raise InvalidArgument("dp", f"must be one of {', '.join(DP_MODES)}")
    if req.dp != "none" and req.strategy in ("heterofl", "fedbuff"):
        raise InvalidArgument("dp", f"applies to fedavg/fedprox, not {req.strategy}")
    try:
        codec = parse_codec(req.update_codec)
    except ValueError as exc:
        raise InvalidArgument("update_codec", str(exc)) from None
    if codec.lossy and req.dp == "client-fixed":
        raise InvalidArgument("dp", "client-fixed needs update_codec none")
    if req.secure_agg and (
        req.strategy not in ("fedavg", "fedprox") or codec.lossy or req.dp != "none"
    ):
        raise InvalidArgument(
            "secure_agg", "runs fedavg/fedprox rounds with update_codec none and dp none"
        )
    if req.secure_agg and req.min_devices < SECURE_AGG_MIN_DEVICES:
        raise InvalidArgument(
            "secure_agg",
            f"needs min_devices >= {SECURE_AGG_MIN_DEVICES}: with 2, either device learns the "
            "other's model from the sum",
        )
    if req.buffer < 1 or req.max_staleness < 0:
        raise InvalidArgument("buffer", "buffer must be >= 1 and max_staleness >= 0")
    if not 1 <= req.rounds <= MAX_ROUNDS:
        raise InvalidArgument("rounds", f"must be 1..{MAX_ROUNDS}")
    if req.min_devices < 1:
        raise InvalidArgument("min_devices", "must be >= 1")
    if req.local_epochs < 1:
        raise InvalidArgument("local_epochs", "must be >= 1")
    for name, value, low, inclusive in (
        ("lr", req.lr, 0.0, False), ("proximal_mu", req.proximal_mu, 0.0, True),
        ("dp_noise", req.dp_noise, 0.0, True), ("dp_clip", req.dp_clip, 0.0, False),
        ("round_timeout_seconds", req.round_timeout, 0.0, False),
    ):  # fmt: skip
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            raise InvalidArgument(name, f"must be a finite number {'>=' if inclusive else '>'} 0")
    if req.name and not _NAME.match(req.name):
        raise InvalidArgument("name", "letters, digits, '.', '_' and '-', at most 64")
    if len(req.init_weights) > MAX_INIT_BYTES:
        raise InvalidArgument("init_weights", f"at most {MAX_INIT_BYTES} bytes")
    try:
        parse_selection(req.select)
    except ValueError as exc:
        raise InvalidArgument("select", str(exc)) from None
