"""A queue source that goes quiet: an alert whose evidence is ready opens without waiting for more news."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llmk.platform.database import make_engine
from llmk.platform.migrate import upgrade
from services.monitor.adapters.tables import MonitorDb
from services.monitor.usecases.alerts import AlertRules
from services.monitor.usecases.items import Item
from services.monitor.usecases.monitor import Monitor, MonitorConfig


class Drained:
    """An answer as Celery's rpc:// backend gives it: it only reads as ready once someone has waited on
    an answer of the same connection (the answers are pushed to a consumer nobody drains meanwhile)."""

    def __init__(self, answer: dict[str, Any], tier: Negative):
        self.answer, self.tier = answer, tier

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        self.tier.drained = True
        return self.answer

    def ready(self) -> bool:
        return self.tier.drained


class Negative:
    def __init__(self) -> None:
        self.drained = False

    def submit(self, texts: Sequence[str]) -> Drained:
        self.drained = False  # a new request: its answer is not drained yet
        p = {"negative": 0.8, "positive": 0.1, "neutral": 0.1}
        results = [{"label": "negative", "probabilities": p, "prompt_tokens": 3} for _ in texts]
        return Drained({"version": 1, "results": results}, self)


def test_an_alert_opens_while_the_queue_is_idle(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'llmk.db'}")
    upgrade(engine)
    repo = MonitorDb(engine)
    config = MonitorConfig("m", AlertRules(window=10, threshold=0.6, min_mentions=1), group=1)
    monitor = Monitor(repo, Negative(), config, "r")
    seen_while_idle: list[int] = []

    def source() -> Iterator[Item | None]:
        yield Item("a", "$ACME falls")
        for _ in range(3):  # the queue is idle: nothing else arrives
            yield None
            seen_while_idle.append(len(repo.alerts("m", "r")))

    monitor.run(source())
    assert seen_while_idle[-1] == 1, seen_while_idle
