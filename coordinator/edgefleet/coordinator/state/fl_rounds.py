"""Federated rounds: the latest round of each model and round counts by outcome.

Why a module of its own: the ServerApp's round records are not device state; they are kept
only so the coordinator can export them as ``edgefleet_fl_*`` metrics. A round is written in one
MULTI/EXEC transaction (its record, the models set and the outcome count).
"""

from __future__ import annotations

from typing import cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.model import FederatedRound


class FederatedRoundState(StateBase):
    """Record federated rounds and read them back for /metrics."""

    @unavailable_on_redis_error
    async def record_fl_round(self, round_: FederatedRound) -> None:
        """Record one finished (or failed) round; the coordinator exports it as metrics."""
        k = self.keys
        fields = {
            "run_id": round_.run_id,
            "round": str(round_.round),
            "outcome": round_.outcome,
            "loss": repr(round_.loss),
            "accuracy": repr(round_.accuracy),
            "participants": str(round_.participants),
            "time": repr(round_.time_unix),
            "update_bytes": str(round_.update_bytes),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(k.fl_rounds(round_.model), mapping=dict(fields.items()))
            pipe.sadd(k.fl_models, round_.model)
            pipe.hincrby(k.fl_outcomes, round_.outcome, 1)
            await pipe.execute()

    @unavailable_on_redis_error
    async def fl_snapshot(self) -> tuple[list[FederatedRound], dict[str, int]]:
        """The latest round of every model, and round counts by outcome."""
        k = self.keys
        models = sorted(cast(set[str], await self._redis.smembers(k.fl_models)))
        latest = []
        for model in models:
            raw = cast(dict[str, str], await self._redis.hgetall(k.fl_rounds(model)))
            if raw:
                latest.append(
                    FederatedRound(
                        model=model,
                        run_id=raw.get("run_id", ""),
                        round=int(raw.get("round") or 0),
                        outcome=raw.get("outcome", ""),
                        loss=float(raw.get("loss") or "nan"),
                        accuracy=float(raw.get("accuracy") or "nan"),
                        participants=int(raw.get("participants") or 0),
                        time_unix=float(raw.get("time") or 0.0),
                        update_bytes=int(raw.get("update_bytes") or 0),
                    )
                )
        outcomes = cast(dict[str, str], await self._redis.hgetall(k.fl_outcomes))
        return latest, {name: int(n) for name, n in outcomes.items()}
