"""Every version the store writes is announced on the RabbitMQ fanout as a VersionEvent: ids and names only;
a malformed message on the exchange is dropped, and the events after it still arrive."""

from __future__ import annotations

import queue
import uuid

import pytest
import torch
from kombu import Connection

from llmk.bootstrap import Deployment
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo, VersionEvent
from llmk.platform.version_events import EXCHANGE, AmqpEvents

pytestmark = pytest.mark.rabbitmq


def test_commits_rollbacks_and_squashes_are_announced(settings, rabbitmq_url) -> None:
    store = Deployment(settings.model_copy(update={"broker_url": rabbitmq_url})).local_store()
    model = f"events-{uuid.uuid4().hex[:8]}"  # the exchange is shared: listen for this model only
    heard: queue.Queue = queue.Queue()
    close = AmqpEvents(rabbitmq_url).subscribe(lambda e: heard.put(e) if e.model == model else None)
    try:
        with Connection(rabbitmq_url) as conn:  # another publisher's bad message: no parent, version a text
            bad = {"model": model, "branch": "main", "version": "7", "changed": []}
            conn.Producer(serializer="json").publish(bad, exchange=EXCHANGE, declare=[EXCHANGE])
        v1 = store.create_model(model, {"a": torch.zeros(4), "b": torch.ones(2)}, {}, {}, CommitInfo())
        delta = Delta(Kind.SPARSE, {"indices": torch.tensor([1]), "values": torch.tensor([0.5])})
        v2 = store.commit(model, {"a": delta})
        v3 = store.rollback(model, str(v1.id))
        v4 = store.squash(model)
        events = [heard.get(timeout=10) for _ in range(4)]
    finally:
        close()
        store.catalog.engine.dispose()
    assert all(isinstance(e, VersionEvent) for e in events)
    assert [(e.version, e.parent, e.branch) for e in events] == [
        (v1.id, None, "main"),
        (v2.id, v1.id, "main"),
        (v3.id, v2.id, "main"),
        (v4.id, v3.id, "main"),
    ]
    # a rollback may change any tensor (None); a squash keeps every value ([])
    assert [e.changed for e in events] == [("a", "b"), ("a",), None, ()]
    assert all(VersionEvent.decode(e.encode()) == e for e in events)
