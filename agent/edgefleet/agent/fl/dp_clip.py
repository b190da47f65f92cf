"""Client-side DP: the ClientApp's mod that clips a train reply's update before it leaves.

Kept apart from :mod:`.clientapp` (one job: what a DP reply releases). Flower's
``fixedclipping_mod`` does the clipping; this mod decides when it runs and what it sees:

* only in the rounds whose config carries ``clipping_norm`` (``--dp client-fixed`` wraps the
  ServerApp's strategy in Flower's client-side wrapper, which puts it there), so a plain run
  neither imports nor pays for it;
* a light-scope reply (``partial-updates``: the trained tensors only) is clipped as the whole
  model would be: the mod wants the tensors it sent back, so the untrained ones are put in as
  received (delta 0, the norm and the scaling are the whole model's) and taken out again;
* integer counters are not released (:mod:`edgefleet.fl.counters`): BatchNorm's
  ``num_batches_tracked`` goes into the clip as received, delta 0. Left as trained, a device's
  ``B`` batches added ``3 * B`` to its update's norm through DS-CNN's 9 counters (60 at
  ``B = 20`` against ``C`` = 5-10: the clip shrank the real weight update to a fraction),
  Flower's mod released the 0-d counter unscaled, and it told the server how many batches the
  device ran. A partial reply leaves the counters out. Nothing is lost: the zoo's BatchNorms
  have a ``momentum`` and never read the counter; the server keeps the global ones.

Imported by the per-message ClientApp process: Flower's message API and numpy-light code only.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Context, Message

from edgefleet.fl.contract import Record
from edgefleet.fl.counters import is_counter

__all__ = ["clip_when_asked"]


def clip_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's ``fixedclipping_mod`` for the train rounds that ask for it, over partial
    replies, with the counters sent back as received (module docstring: why)."""
    config = msg.content.config_records.get(Record.CONFIG)
    if msg.metadata.message_type != "train" or config is None or "clipping_norm" not in config:
        return call_next(msg, context)  # type: ignore[no-any-return]
    from flwr.clientapp.mod import fixedclipping_mod

    received = next(iter(msg.content.array_records.values()), None)
    trained: list[str] = []

    def whole(inner: Message, ctx: Context) -> Message:
        out: Message = call_next(inner, ctx)
        if out.has_error() or received is None or len(out.content.array_records) != 1:
            return out
        key, reply = next(iter(out.content.array_records.items()))
        trained[:] = list(reply.keys())
        out.content.array_records[key] = ArrayRecord(
            {k: reply[k] if k in reply and not is_counter(k, v) else v for k, v in received.items()}
        )
        return out

    clipped = fixedclipping_mod(msg, context, whole)
    if clipped.has_error() or received is None or trained == list(received.keys()):
        return clipped
    key, reply = next(iter(clipped.content.array_records.items()))
    clipped.content.array_records[key] = ArrayRecord(
        {k: reply[k] for k in trained if k in reply and not is_counter(k, reply[k])}
    )
    return clipped
