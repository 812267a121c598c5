"""Every version the store writes is announced on the RabbitMQ fanout, with ids and names only."""

from __future__ import annotations

import queue
import uuid

import pytest
import torch

from llmk.app.store import CommitInfo
from llmk.bus.events import AmqpEvents
from llmk.domain.deltas import Delta, Kind
from llmk.wiring import open_store

pytestmark = pytest.mark.rabbitmq


def test_commits_rollbacks_and_squashes_are_announced(settings, rabbitmq_url) -> None:
    store = open_store(settings.model_copy(update={"broker_url": rabbitmq_url}))
    model = f"events-{uuid.uuid4().hex[:8]}"  # the exchange is shared: listen for this model only
    heard: queue.Queue = queue.Queue()
    close = AmqpEvents(rabbitmq_url).subscribe(lambda e: heard.put(e) if e.get("model") == model else None)
    try:
        v1 = store.create_model(model, {"a": torch.zeros(4), "b": torch.ones(2)}, {}, {}, CommitInfo())
        delta = Delta(Kind.SPARSE, {"indices": torch.tensor([1]), "values": torch.tensor([0.5])})
        v2 = store.commit(model, {"a": delta})
        v3 = store.rollback(model, str(v1.id))
        v4 = store.squash(model)
        events = [heard.get(timeout=10) for _ in range(4)]
    finally:
        close()
        store.catalog.engine.dispose()
    assert [(e["version"], e["parent"], e["branch"]) for e in events] == [
        (v1.id, None, "main"),
        (v2.id, v1.id, "main"),
        (v3.id, v2.id, "main"),
        (v4.id, v3.id, "main"),
    ]
    # a rollback may change any tensor (None); a squash keeps every value ([])
    assert [e["changed"] for e in events] == [["a", "b"], ["a"], None, []]
    assert all(set(e) == {"model", "branch", "version", "parent", "changed"} for e in events)
