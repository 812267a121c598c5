"""An alert's evidence is explained while the stream flows on: the monitor never waits for it mid-stream."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmk.platform.database import make_engine
from llmk.platform.migrate import upgrade
from services.monitor.adapters.tables import MonitorDb
from services.monitor.usecases.alerts import AlertRules
from services.monitor.usecases.items import Item
from services.monitor.usecases.monitor import Monitor, MonitorConfig

STREAM = [f"$ACME falls sharply, item {i}" for i in range(12)]


class Answer:
    def __init__(self, answer: dict[str, Any], ready: Any):
        self.answer, self._ready = answer, ready

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        return self.answer

    def ready(self) -> bool:
        return bool(self._ready())


class SlowToExplain:
    """The inference tier as the monitor sees it: stream items answer at once; an explanation's variants
    (texts that are not stream items) only count as ready once the whole stream is scored."""

    def __init__(self) -> None:
        self.scored = 0

    def submit(self, texts: Sequence[str]) -> Answer:
        results = [self._scores(t) for t in texts]
        stream = all(t in STREAM for t in texts)
        return Answer({"version": 1, "results": results}, lambda: stream or self.scored >= len(STREAM))

    @staticmethod
    def _scores(text: str) -> dict[str, Any]:
        negative = 0.9 if "falls" in text else 0.4  # leaving out "falls" lowers it: the top word
        rest = (1 - negative) / 2
        probabilities = {"negative": negative, "positive": rest, "neutral": rest}
        return {"label": "negative", "probabilities": probabilities, "prompt_tokens": 4}


def test_an_alert_opens_once_explained_without_holding_up_the_stream(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'llmk.db'}")
    upgrade(engine)
    repo, scoring = MonitorDb(engine), SlowToExplain()
    scored_when_opened: list[int] = []
    config = MonitorConfig("m", AlertRules(window=4, threshold=0.6, min_mentions=3), group=1, in_flight=1)

    def count(summary: Any) -> None:
        scoring.scored = summary.scored

    monitor = Monitor(
        repo,
        scoring,
        config,
        "r",
        on_progress=count,
        on_alert=lambda _: scored_when_opened.append(scoring.scored),
    )
    summary = monitor.run(Item(f"i{n}", t) for n, t in enumerate(STREAM))
    assert (summary.scored, summary.alerts) == (len(STREAM), 1)
    assert scored_when_opened == [len(STREAM)]  # the stream never stopped for the explanation
    [alert] = repo.alerts("m", "r")
    assert alert.direction == "negative"
    assert len(alert.evidence) == 3
    assert all(e.top_tokens[0][0] == "falls" for e in alert.evidence)


class NewerExplains(SlowToExplain):
    """The stream is scored by version 1; by the time the alert is explained, version 3 serves, which
    gives the same texts another probability."""

    def submit(self, texts: Sequence[str]) -> Answer:
        stream = all(t in STREAM for t in texts)
        results = [self._scores(t) for t in texts]
        if not stream:
            results = [{**r, "probabilities": {**r["probabilities"], "negative": 0.3}} for r in results]
        return Answer({"version": 1 if stream else 3, "results": results}, lambda: True)


def test_evidence_shows_the_stored_score_and_its_version_beside_the_explanations(tmp_path: Path) -> None:
    from llmk.cli.monitor import evidence_line

    engine = make_engine(f"sqlite:///{tmp_path / 'llmk.db'}")
    upgrade(engine)
    repo = MonitorDb(engine)
    config = MonitorConfig("m", AlertRules(window=4, threshold=0.6, min_mentions=3), group=1, in_flight=1)
    Monitor(repo, NewerExplains(), config, "r").run(Item(f"i{n}", t) for n, t in enumerate(STREAM))
    [alert] = repo.alerts("m", "r")
    e = alert.evidence[0]
    assert (e.scored_label, e.scored_probability, e.scored_version) == ("negative", 0.9, 1)
    assert (e.label, e.probability, e.version) == ("negative", 0.3, 3)
    line = evidence_line(e)
    assert "scored negative 0.900 by version 1" in line
    assert "explained on version 3: negative 0.300" in line


def test_a_cleared_alert_keeps_why_it_cleared(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'llmk.db'}")
    upgrade(engine)
    repo = MonitorDb(engine)
    turned = STREAM[:4] + [f"$ACME recovers, item {i}" for i in range(4)]
    config = MonitorConfig("m", AlertRules(window=4, threshold=0.6, min_mentions=3), group=1, in_flight=1)
    Monitor(repo, Turning(turned[:4]), config, "r", on_progress=None).run(
        Item(f"i{n}", t) for n, t in enumerate(turned)
    )
    [alert] = [a for a in repo.alerts("m", "r") if a.direction == "negative"]
    assert alert.cleared is not None
    assert alert.cleared_reason.startswith("share ")
    assert "fell below 0.50 (threshold 0.60 minus hysteresis 0.10)" in alert.cleared_reason


class Turning(SlowToExplain):
    """Negative news first, then positive: every answer ready at once."""

    def __init__(self, bad: list[str]) -> None:
        super().__init__()
        self.bad = bad

    def submit(self, texts: Sequence[str]) -> Answer:
        return Answer({"version": 1, "results": [self._turning(t) for t in texts]}, lambda: True)

    def _turning(self, text: str) -> dict[str, Any]:
        if "recovers" in text:
            probabilities = {"negative": 0.1, "positive": 0.8, "neutral": 0.1}
            return {"label": "positive", "probabilities": probabilities, "prompt_tokens": 4}
        return self._scores(text)
