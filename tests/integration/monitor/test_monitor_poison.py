"""A poison message cannot crash-loop the queue monitor: text and ids PostgreSQL refuses (NUL, lone
surrogates) are rejected with the reason before the database sees them, and a message that still kills
the monitor every time goes to the dead-letter queue after the delivery limit, alone."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kombu import Connection

from llmk.bootstrap import Deployment
from llmk.domain.task_spec import TaskSpec, set_task
from llmk.platform.database import make_engine
from llmk.platform.migrate import upgrade
from services.inference.main import embedded_worker
from services.inference.queue.client import QueuedClassifier
from services.monitor.adapters.news_queue import DELIVERY_LIMIT, dead_letters, declare, publish, queue_items
from services.monitor.adapters.tables import MonitorDb
from services.monitor.usecases.items import Item
from services.monitor.usecases.monitor import Monitor, MonitorConfig, Summary
from tests.unit.inference.hosting import settings_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(300)]


def raw_publish(url: str, name: str, bodies: list[bytes], **properties: str) -> None:
    with Connection(url) as connection:
        queue = declare(connection, name)
        for body in bodies:
            connection.Producer().publish(body, routing_key=name, declare=[queue], **properties)


def depth(url: str, name: str) -> int:
    with Connection(url) as connection:
        return int(connection.default_channel.queue_declare(name, passive=True).message_count)


def test_nul_and_lone_surrogates_are_rejected_before_postgresql(
    rabbitmq_url: str, postgres_url: str, tiny_home: tuple[Path, str]
) -> None:
    home, name = tiny_home
    news = f"news-{uuid.uuid4().hex[:8]}"
    publish(rabbitmq_url, news, [{"text": "nul \x00 here", "id": "p1"}, {"text": "fine", "id": "bad\x00id"}])
    raw_publish(rabbitmq_url, news, [b'{"text": "\\ud800 alone", "id": "p3"}', b"plain \x00 text"])
    publish(rabbitmq_url, news, [{"text": "$ACME after the poison", "id": "good"}])
    settings = settings_for(home)
    set_task(Deployment(settings).local_store(), name, TaskSpec(labels=("negative", "positive")))
    engine = make_engine(postgres_url)
    upgrade(engine)
    app = Deployment(settings).inference_queue()
    repo = MonitorDb(engine)
    with (
        embedded_worker(Deployment(settings), app, name, None),
        queue_items(rabbitmq_url, news, "p", 4096) as source,
    ):

        def stop_when_all_read(summary: Summary) -> None:
            if summary.read >= 5:
                source.stop.set()

        monitor = Monitor(repo, QueuedClassifier(app, name), MonitorConfig(name), "p", stop_when_all_read)
        monitor.on_done = source.done
        summary = monitor.run(source)
    assert (summary.read, summary.scored, summary.rejected) == (5, 1, 4)
    assert [s.item_id for s in repo.scores(name, None, None, "p")] == ["good"]
    reasons = sorted(r.reason for r in repo.rejects(name, "p"))
    assert reasons == [
        "the id holds a NUL byte",
        "the text holds a NUL byte",
        "the text holds a NUL byte",
        "the text holds a lone surrogate ('\\ud800')",
    ]
    assert depth(rabbitmq_url, news) == 0  # every message stored was acknowledged


def test_a_message_that_kills_the_monitor_is_dead_lettered_alone(rabbitmq_url: str) -> None:
    news = f"news-{uuid.uuid4().hex[:8]}"
    publish(rabbitmq_url, news, [{"text": "first", "id": "a"}, {"text": "poison", "id": "p"}])
    publish(rabbitmq_url, news, [{"text": f"behind {i}", "id": f"b{i}"} for i in range(3)])
    stored: list[str] = []
    for _ in range(DELIVERY_LIMIT + 3):  # every run dies on the poison until it is dead-lettered
        with queue_items(rabbitmq_url, news, "d", 4096) as source:
            last: object = "start"
            for entry in source:
                if (entry is None and last is None) or (isinstance(entry, Item) and entry.text == "poison"):
                    break  # idle (a returned message is followed by one None), or the monitor dies
                if entry is not None:
                    stored.append(entry.id)
                    source.done(entry.id)
                last = entry
    assert sorted(stored) == ["a", "b0", "b1", "b2"]  # each stored once, none lost with the poison
    assert (depth(rabbitmq_url, news), depth(rabbitmq_url, dead_letters(news))) == (0, 1)
    with Connection(rabbitmq_url) as c:
        assert "poison" in c.SimpleQueue(dead_letters(news)).get(timeout=5).body
