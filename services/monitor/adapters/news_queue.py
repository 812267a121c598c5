"""A RabbitMQ queue as the monitor's source: one message per item, acknowledged once the item is stored.

A message body is a JSON object with a `text` field (and any other fields, an `id` among them) or plain
UTF-8 text. An item's id is its `id` field, else the message id, else a hash of the body, so a message
delivered again (the monitor was killed before acknowledging it) is recognised and stored once.
"""

from __future__ import annotations

import hashlib
import queue as local
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Connection, Message, Queue

from services.monitor.usecases.items import Item, Rejected, read_items

POLL_SECONDS = 1.0


class QueueSource:
    """Iterates the queue's items until `stop` is set; `done(item_id)` acknowledges one."""

    def __init__(self, connection: Connection, name: str, run: str, max_item_bytes: int):
        self.connection, self.run, self.limit = connection, run, max_item_bytes
        self.queue = Queue(name, durable=True)
        self.stop = threading.Event()
        self._unacked: dict[str, list[Message]] = {}  # per item id, in arrival order (ids may repeat)
        self._inbox: local.Queue[Message] = local.Queue()

    def __iter__(self) -> Iterator[Item | Rejected | None]:
        """Items as they arrive; None when the queue is idle (the monitor then finishes what it has)."""
        with self.connection.Consumer(self.queue, callbacks=[self._on_message], prefetch_count=256):
            while not self.stop.is_set():
                try:
                    self.connection.drain_events(timeout=POLL_SECONDS)
                except TimeoutError:
                    yield None
                    continue
                while not self._inbox.empty():
                    yield self._item(self._inbox.get())

    def _on_message(self, body: Any, message: Message) -> None:
        self._inbox.put(message)

    def done(self, item_id: str) -> None:
        waiting = self._unacked.get(item_id)
        if waiting:
            waiting.pop(0).ack()
            if not waiting:
                del self._unacked[item_id]

    def _item(self, message: Message) -> Item | Rejected:
        body: bytes = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        fallback = message.properties.get("message_id") or "sha-" + hashlib.sha256(body).hexdigest()[:20]
        line = body if body.lstrip().startswith(b"{") else _as_json(body)
        entry = next(read_items([line], "jsonl", self.run, self.limit))
        if entry.id.startswith(f"{self.run}-"):  # no id of its own: a stable one, so a redelivery is known
            entry = (
                Item(fallback, entry.text, entry.fields)
                if isinstance(entry, Item)
                else Rejected(fallback, entry.reason, entry.raw)
            )
        self._unacked.setdefault(entry.id, []).append(message)
        return entry


def _as_json(body: bytes) -> bytes:
    import json

    try:
        return json.dumps({"text": body.decode()}).encode()
    except UnicodeDecodeError:
        return body  # read_items says why it is refused


@contextmanager
def queue_items(url: str, name: str, run: str, max_item_bytes: int) -> Iterator[QueueSource]:
    with Connection(url) as connection:
        source = QueueSource(connection, name, run, max_item_bytes)
        yield source


def publish(url: str, name: str, bodies: list[dict[str, Any]]) -> None:
    """Put items on the queue (for tests and demos; real feeds publish with any AMQP client)."""
    import json

    with Connection(url) as connection:
        producer = connection.Producer()
        target = Queue(name, durable=True)
        for body in bodies:
            producer.publish(json.dumps(body), routing_key=name, declare=[target], delivery_mode=2)


class AlertPublisher:
    """Alerts as JSON messages on a durable queue (`alerts`), for whatever pages the analysts."""

    def __init__(self, url: str, queue: str = "alerts"):
        self.connection = Connection(url)
        self.queue = Queue(queue, durable=True)
        self.producer = self.connection.Producer()

    def __call__(self, alert: Any) -> None:
        import dataclasses
        import json

        body = json.dumps(dataclasses.asdict(alert), default=str)
        self.producer.publish(
            body, routing_key=self.queue.name, declare=[self.queue], delivery_mode=2, retry=True
        )

    def close(self) -> None:
        self.connection.release()
