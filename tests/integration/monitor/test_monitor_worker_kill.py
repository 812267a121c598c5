"""The monitor over the real RabbitMQ with two inference worker processes: one is SIGKILLed mid-stream,
its unacknowledged items are delivered again to the other, and every item is scored exactly once."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from llmk.bootstrap import Deployment
from llmk.platform.database import make_engine
from llmk.platform.migrate import upgrade
from services.inference.queue.client import QueuedClassifier
from services.monitor.adapters.tables import MonitorDb
from services.monitor.usecases.items import Item
from services.monitor.usecases.monitor import Monitor, MonitorConfig, Summary
from tests.integration.inference.inference_processes import ServiceProcess
from tests.unit.inference.hosting import settings_for

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(600)]
ITEMS = 400


def test_a_worker_killed_mid_stream_loses_nothing_and_scores_nothing_twice(
    rabbitmq_url: str, tiny_home: tuple[Path, str], service: Callable[..., ServiceProcess]
) -> None:
    home, name = tiny_home
    queue = f"llmk-test-monitor-{uuid.uuid4().hex[:8]}"
    options = dict(broker_url=rabbitmq_url, inference_queue=queue, max_wait_ms=20.0)
    workers = [service(home, name, "--worker", **options) for _ in range(2)]
    for w in workers:
        w.wait_for(r"\S+@\S+ ready")
    settings = settings_for(home, **options)
    engine = make_engine(settings.sqlalchemy_url)
    upgrade(engine)
    killed: list[int] = []

    def kill_one(summary: Summary) -> None:
        if summary.scored >= ITEMS // 4 and not killed:
            workers[0].process.send_signal(signal.SIGKILL)
            killed.append(summary.scored)

    monitor = Monitor(
        MonitorDb(engine),
        QueuedClassifier(Deployment(settings).inference_queue(), name),
        MonitorConfig(name, timeout=120),
        "kill",
    )
    monitor.on_progress = kill_one
    summary = monitor.run(Item(f"item-{i}", f"headline number {i} about $ACME") for i in range(ITEMS))

    assert killed
    assert killed[0] < ITEMS  # the kill landed mid-stream
    assert workers[0].process.wait(10) == -signal.SIGKILL
    assert (summary.read, summary.scored, summary.rejected, summary.duplicates) == (ITEMS, ITEMS, 0, 0)
    with engine.connect() as c:
        rows = c.execute(
            text("SELECT count(*), count(DISTINCT item_id) FROM monitor_scores WHERE run='kill'")
        )
        assert tuple(rows.one()) == (ITEMS, ITEMS)
