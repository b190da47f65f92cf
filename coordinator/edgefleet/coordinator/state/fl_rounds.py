"""Federated rounds: the latest round of each model and round counts by outcome.

Why a module of its own: the ServerApp's round records are not device state; they are kept
only so the coordinator can export them as ``edgefleet_fl_*`` metrics. A round is written by one
script (its record, the models set and the outcome count) that first adds ``run|round|outcome``
to a set of written records: a write retried after its reply was lost (a client library's
automatic retry, a reporter that saw a timeout) is a no-op, so every round is counted once.
"""

from __future__ import annotations

from typing import cast

from edgefleet.coordinator.state.base import StateBase, unavailable_on_redis_error
from edgefleet.coordinator.state.connect import RedisClient
from edgefleet.coordinator.state.keys import Keys
from edgefleet.coordinator.state.model import FederatedRound

# KEYS: the model's latest-round hash, models set, outcomes hash, written-records set.
# ARGV: record id (run|round|outcome), model, outcome, then field/value pairs. 1 if written.
_RECORD = """
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return 1
"""


class FederatedRoundState(StateBase):
    """Record federated rounds and read them back for /metrics."""

    def __init__(self, client: RedisClient, keys: Keys | None = None) -> None:
        super().__init__(client, keys)
        self._record_round = client.register_script(_RECORD)

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
        record = f"{round_.run_id}|{round_.round}|{round_.outcome}"
        await self._record_round(
            keys=[k.fl_rounds(round_.model), k.fl_models, k.fl_outcomes, k.fl_recorded],
            args=[record, round_.model, round_.outcome, *(x for kv in fields.items() for x in kv)],
        )

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
