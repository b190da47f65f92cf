"""A Flower Grid that runs a ClientApp in this process, one message at a time.

Why: the Simulation Engine needs Ray, whose start-up alone takes 10-30 s on the shared test box;
the round loop, the ClientApp and what a simulation adds to them (the virtual devices' facts,
the task's shards, the scope mix) can be exercised in a second through this stand-in for the
transport. What only Ray does (actors, pickling the app) is covered by the slow tests.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid


class InlineGrid(Grid):
    """``num_nodes`` virtual nodes (ids 1000..), each with a persistent Context holding only
    its partition, as the Simulation Engine gives them."""

    def __init__(self, app: ClientApp, num_nodes: int) -> None:
        self.app = app
        self.contexts = {
            1000 + i: Context(
                1, 1000 + i, {"partition-id": i, "num-partitions": num_nodes}, RecordDict(), {}
            )
            for i in range(num_nodes)
        }
        self.replies: dict[str, Message] = {}
        self._run: Any = None

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
        ttl: float | None = None,
    ) -> Message:  # fmt: skip
        return Message(content, dst_node_id=dst_node_id, message_type=message_type)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # a device's failure becomes an error reply, as in Flower
                reply = Message(Error(0, f"{type(exc).__name__}: {exc}"), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in message_ids if i in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
