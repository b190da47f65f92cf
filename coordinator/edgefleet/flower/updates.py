"""What a train reply's ArrayRecord stands for, whatever codec the device used, and its weight.

A device replies with either its fine-tuned model (``update-codec none``: what Flower's own
strategies and DP wrappers expect) or an encoded delta from the model it was sent
(:mod:`edgefleet.fl.update_codec`). The synchronous loop turns an encoded reply back into the
model it stands for before Flower's ``aggregate_train`` sees it (:func:`restore`); FedBuff
works on deltas (:func:`delta_of`). :func:`wire_bytes` is what the arrays weigh as serialized
in the message, for the per-round byte counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import Message

from edgefleet.fl.update_codec import Codec, decode
from edgefleet.flower import model as fl_model
from edgefleet.flower.strategies import arrays_of, to_record

__all__ = ["delta_of", "restore", "wire_bytes"]


def wire_bytes(messages: Iterable[Message]) -> int:
    """Bytes of the serialized arrays the messages carry (the payload, without framing)."""
    return sum(
        len(arr.data)
        for m in messages
        if not m.has_error()
        for rec in m.content.array_records.values()
        for arr in rec.values()
    )


def _reply_arrays(reply: Message) -> dict[str, np.ndarray]:
    record = next(iter(reply.content.array_records.values()))
    return {k: v.numpy() for k, v in record.items()}


def delta_of(sent: Mapping[str, np.ndarray], reply: Message, codec: Codec) -> fl_model.Arrays:
    """The update a reply carries, as ``local - sent`` per tensor it holds (a device that
    trained a light scope sends those tensors only)."""
    raw = _reply_arrays(reply)
    if codec.lossy:
        delta = decode(raw, codec)
    else:
        delta = {k: np.asarray(v, np.float32) - sent[k] for k, v in raw.items()}
    if not set(delta) <= set(sent):
        raise ValueError(f"update tensors {sorted(set(delta) - set(sent))[:3]} were not sent")
    for name, d in delta.items():
        if d.shape != sent[name].shape:
            raise ValueError(f"update {name!r} {d.shape} does not match the model sent")
    return delta


def restore(sent: Sequence[Message], replies: Sequence[Message], codec: Codec) -> list[Message]:
    """Encoded replies as the fine-tuned models they stand for (``sent + delta``).

    Replies are matched to what was sent by message id; with ``none`` they pass unchanged.
    """
    if not codec.lossy:
        return list(replies)
    by_id = {m.metadata.message_id: m for m in sent}
    out = []
    for reply in replies:
        if reply.has_error():
            out.append(reply)
            continue
        src = by_id[reply.metadata.reply_to_message_id]
        base = arrays_of(next(iter(src.content.array_records.values())))
        delta = delta_of(base, reply, codec)
        key = next(iter(reply.content.array_records))
        reply.content.array_records[key] = to_record({k: base[k] + delta[k] for k in delta})
        out.append(reply)
    return out
