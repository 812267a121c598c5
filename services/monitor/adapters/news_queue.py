"""A RabbitMQ queue as the monitor's source: one message per item, acknowledged once the item is stored.

A message body is a JSON object with a `text` field (and any other fields, an `id` among them) or plain
UTF-8 text. An item's id is its `id` field, else the message id, else a hash of the body, so a message
delivered again (the monitor was killed before acknowledging it) is recognised and stored once. Text or
ids a database refuses (NUL, lone surrogates) are rejected with the reason before any database sees them.
The queue is a quorum queue with a delivery limit: a message that still kills the monitor every time it
is read goes to the dead-letter queue `<name>.dead` after DELIVERY_LIMIT tries, and the stream goes on.
"""

from __future__ import annotations

import hashlib
import queue as local
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import Connection, Message, Queue

from llmk.errors import InvalidInput
from services.monitor.usecases.items import MAX_ID, Item, Rejected, read_message, string_problem

POLL_SECONDS = 1.0
PREFETCH = 256
DELIVERY_LIMIT = 5  # returns to the queue (a monitor that died holding it) before a message is dead


def news_queue(name: str) -> Queue:
    """The news queue: durable, quorum, dead-lettering to `<name>.dead` after DELIVERY_LIMIT returns."""
    arguments = {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letters(name),
    }
    return Queue(name, durable=True, queue_arguments=arguments)


def dead_letters(name: str) -> str:
    return f"{name}.dead"


def declare(connection: Connection, name: str) -> Queue:
    """Declare the news queue and its dead-letter queue; one clear line if `name` exists unlike it."""
    queue = news_queue(name)
    try:
        Queue(dead_letters(name), durable=True)(connection.default_channel).declare()
        queue(connection.default_channel).declare()
    except connection.channel_errors as e:  # PRECONDITION_FAILED: the arguments differ
        raise InvalidInput(
            f"queue {name!r} exists with other settings than a news queue's (a quorum queue with a delivery "
            f"limit): delete it (rabbitmqctl delete_queue {name}) or choose another --queue ({e})"
        ) from None
    return queue


class QueueSource:
    """Iterates the queue's items until `stop` is set; `done(item_id)` acknowledges one."""

    def __init__(self, connection: Connection, name: str, run: str, max_item_bytes: int):
        self.connection, self.run, self.limit = connection, run, max_item_bytes
        self.queue = declare(connection, name)
        self.stop = threading.Event()
        self._unacked: dict[str, list[Message]] = {}  # per item id, in arrival order (ids may repeat)
        self._inbox: local.Queue[Message] = local.Queue()

    def __iter__(self) -> Iterator[Item | Rejected | None]:
        """Items as they arrive; None when the queue is idle (the monitor then finishes what it has).

        Messages returned by a monitor that died holding them come first, one at a time, each stored
        before the next is taken: only the message that kills the monitor counts deliveries towards
        the limit, not the ones that happened to be read with it. The first new message ends that care."""
        with self.connection.Consumer(self.queue, callbacks=[self._on_message], prefetch_count=1) as c:
            careful = True
            while not self.stop.is_set():
                try:
                    self.connection.drain_events(timeout=POLL_SECONDS)
                except TimeoutError:
                    yield None
                    continue
                while not self._inbox.empty():
                    message = self._inbox.get()
                    if careful and not message.delivery_info.get("redelivered"):
                        careful = False
                        c.cancel()  # a consumer's prefetch is fixed when it starts
                        c.qos(prefetch_count=PREFETCH)
                        c.consume()
                    yield self._item(message)
                    if careful:
                        yield None  # stored and acknowledged before the next is delivered

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
        line = body if body.lstrip().removeprefix(b"\xef\xbb\xbf").startswith(b"{") else _as_json(body)
        entry = read_message(line, _fallback_id(message, body), self.limit)
        self._unacked.setdefault(entry.id, []).append(message)
        return entry


def _fallback_id(message: Message, body: bytes) -> str:
    """The message id when it is a usable one, else a hash of the body: stable, so a redelivery is known."""
    given = message.properties.get("message_id")
    if isinstance(given, str) and 0 < len(given) <= MAX_ID and string_problem(given) is None:
        return given
    return "sha-" + hashlib.sha256(body).hexdigest()[:20]


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
        target = declare(connection, name)
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
