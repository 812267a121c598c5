"""A RabbitMQ queue as the monitor's source: every message becomes a scored or rejected item and is
acknowledged once stored, a message delivered twice is scored once, and alerts go to the alerts queue."""

from __future__ import annotations

import json
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
from services.monitor.adapters.news_queue import AlertPublisher, publish, queue_items
from services.monitor.adapters.tables import MonitorDb
from services.monitor.usecases.alerts import AlertRules
from services.monitor.usecases.monitor import Monitor, MonitorConfig, Summary
from tests.unit.inference.hosting import settings_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(300)]


def test_queue_items_are_scored_once_acknowledged_and_alerts_published(
    rabbitmq_url: str, tiny_home: tuple[Path, str]
) -> None:
    home, name = tiny_home
    news, alerts = f"news-{uuid.uuid4().hex[:8]}", f"alerts-{uuid.uuid4().hex[:8]}"
    bodies = [{"text": f"$ACME headline {i}", "id": f"m{i}"} for i in range(12)]
    bodies += [{"text": ""}, {"text": "$ACME headline 3", "id": "m3"}]  # an empty text; m3 again
    publish(rabbitmq_url, news, bodies)
    settings = settings_for(home)  # the embedded inference worker; the news come from RabbitMQ
    two_moods = TaskSpec(labels=("negative", "positive"), template="{text} ->")  # every item has a mood
    set_task(Deployment(settings).local_store(), name, two_moods)
    engine = make_engine(settings.sqlalchemy_url)
    upgrade(engine)
    app = Deployment(settings).inference_queue()
    rules = AlertRules(window=20, threshold=0.5, min_mentions=3)
    publisher = AlertPublisher(rabbitmq_url, alerts)
    with (
        embedded_worker(Deployment(settings), app, name, None),
        queue_items(rabbitmq_url, news, "q", 4096) as source,
    ):

        def stop_when_all_read(summary: Summary) -> None:
            if summary.read >= len(bodies):
                source.stop.set()

        config = MonitorConfig(name, rules, evidence_items=1)
        monitor = Monitor(
            MonitorDb(engine), QueuedClassifier(app, name), config, "q", stop_when_all_read, publisher
        )
        monitor.on_done = source.done
        summary = monitor.run(source)
    publisher.close()
    assert (summary.read, summary.scored, summary.rejected, summary.duplicates) == (14, 12, 2, 1)
    assert summary.versions == [2]  # the task version
    with Connection(rabbitmq_url) as c:
        assert c.default_channel.queue_declare(news, passive=True).message_count == 0  # all acknowledged
        published = c.SimpleQueue(alerts)
        assert summary.alerts >= 1
        assert published.qsize() == summary.alerts
        alert = json.loads(published.get(timeout=5).payload)
        assert alert["ticker"] == "ACME"
        assert alert["evidence"][0]["top_tokens"]
