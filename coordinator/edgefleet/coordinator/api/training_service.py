"""TrainingService: federated runs over the API (issue 18), with AdminService's authentication.

Starting and stopping need the admin role, reading accepts a read-only token too
(:func:`.guard.admin_rpc`). The logic is :class:`edgefleet.coordinator.fl.runs.TrainingRuns`;
this module only converts its plain records to and from wire messages.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from edgefleet.coordinator.api.guard import admin_rpc, bearer_token, guard
from edgefleet.coordinator.fl.runs import RunRequest, RunView, TrainingRuns
from edgefleet.coordinator.metrics import CoordinatorMetrics
from edgefleet.coordinator.tokens import Tokens
from edgefleet.coordinator.validation import check_text
from edgefleet.limits import MAX_NAME_CHARS
from edgefleet.v1 import training_pb2, training_pb2_grpc

SERVICE_NAME = training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def run_to_proto(view: RunView) -> training_pb2.TrainingRun:
    r = view.record
    settings = r.get("settings") or {}
    rounds = [
        training_pb2.TrainingRound(
            round=int(x.get("round", 0)), participants=[str(p) for p in x.get("participants", [])],
            failed=int(x.get("failed") or 0), train_loss=_opt(x.get("train_loss")),
            client_eval_acc=_opt(x.get("client_eval_acc")), test_acc=_opt(x.get("test_acc")),
            seconds=float(x.get("seconds") or 0.0),
        )
        for x in view.rounds
    ]  # fmt: skip
    return training_pb2.TrainingRun(
        name=view.name, state=view.state, reason=view.reason,
        model=str(r.get("model") or settings.get("arch") or ""),
        strategy=str(settings.get("strategy") or ""),
        num_rounds=int(settings.get("num_rounds") or 0), superlink=str(r.get("superlink") or ""),
        flwr_run_id=int(r.get("flwr_run_id") or 0), rounds=rounds,
        initial_test_acc=_opt((r.get("initial") or {}).get("test_acc")),
        final_test_acc=_opt((r.get("final") or {}).get("test_acc")),
        registered_model=str(r.get("registered_model") or ""),
        created_unix=float(r.get("started") or 0.0),
        record_json=json.dumps(r, default=str),
    )  # fmt: skip


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):  # type: ignore[misc]
    """Start, watch, list and stop federated runs; any replica serves any run."""

    def __init__(
        self, runs: TrainingRuns, tokens: Tokens, metrics: CoordinatorMetrics | None = None
    ) -> None:
        self._runs = runs
        self._tokens = tokens
        self._metrics = metrics

    @admin_rpc(write=True)
    async def StartRun(
        self, request: training_pb2.StartRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> training_pb2.TrainingRun:
        check_text("model", request.model, MAX_NAME_CHARS, required=True)
        check_text("name", request.name, MAX_NAME_CHARS)
        req = RunRequest(
            model=request.model, rounds=request.rounds or 3,
            strategy=request.strategy or "fedavg", min_devices=request.min_devices or 2,
            select=request.select, lr=request.lr, local_epochs=request.local_epochs or 1,
            proximal_mu=request.proximal_mu, dp=request.dp or "none", dp_noise=request.dp_noise,
            dp_clip=request.dp_clip or 10.0,
            round_timeout=request.round_timeout_seconds or 120.0, name=request.name,
            register=request.register, init_weights=request.init_weights,
            buffer=request.buffer or 4,
            max_staleness=request.max_staleness if request.HasField("max_staleness") else 4,
            update_codec=request.update_codec or "none", secure_agg=request.secure_agg,
            lora_rank=request.lora_rank, lora_alpha=request.lora_alpha,
            lora_targets=tuple(request.lora_targets), lora_steps=request.lora_steps,
        )  # fmt: skip
        return run_to_proto(await self._runs.start(req))

    @admin_rpc(write=False)
    async def GetRun(
        self, request: training_pb2.GetRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> training_pb2.TrainingRun:
        check_text("name", request.name, MAX_NAME_CHARS, required=True)
        return run_to_proto(await self._runs.get(request.name))

    @admin_rpc(write=False)
    async def ListRuns(
        self, request: training_pb2.ListRunsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> training_pb2.ListRunsResponse:
        return training_pb2.ListRunsResponse(
            runs=[run_to_proto(v) for v in await self._runs.list()]
        )

    @admin_rpc(write=True)
    async def StopRun(
        self, request: training_pb2.StopRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> training_pb2.TrainingRun:
        check_text("name", request.name, MAX_NAME_CHARS, required=True)
        return run_to_proto(await self._runs.stop(request.name))

    async def WatchRun(
        self, request: training_pb2.WatchRunRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[training_pb2.TrainingRun]:
        async def authorize() -> None:
            self._tokens.check_admin(bearer_token(context), write=False)
            check_text("name", request.name, MAX_NAME_CHARS, required=True)
            await self._runs.get(request.name)  # NOT_FOUND before the stream starts

        await guard(context, authorize, self._metrics)
        updates = self._runs.watch(request.name)
        while True:
            view = await guard(context, lambda: _next(updates), self._metrics)
            if view is None:
                return
            yield run_to_proto(view)


async def _next(updates: AsyncIterator[RunView]) -> RunView | None:
    try:
        return await anext(updates)
    except StopAsyncIteration:
        return None


def add_training_service(
    server: grpc.aio.Server,
    runs: TrainingRuns,
    tokens: Tokens,
    metrics: CoordinatorMetrics | None = None,
) -> str:
    """Serve TrainingService on ``server``; return its full name (for health and reflection)."""
    training_pb2_grpc.add_TrainingServiceServicer_to_server(
        TrainingServicer(runs, tokens, metrics), server
    )
    return SERVICE_NAME
