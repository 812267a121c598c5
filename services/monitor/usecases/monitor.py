"""The monitor: a stream of items is scored by the inference tier, stored, and watched for alerts.

Items go to the inference queue in groups of `group` texts per message, up to `in_flight` items at a
time, so the workers' batchers stay full and a killed worker's unacknowledged items are delivered again.
Answers are taken in stream order, so per-ticker moods see the stream as it came. Every item read is
counted once: as scored (stored with the version that scored it) or as rejected (stored with the reason),
an item already scored among them: in = scored + rejected, always. An alert opens once its evidence is
explained; the explanation's requests travel beside the stream's, so the stream never waits for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from llmk.errors import LlmkError, Unavailable
from services.monitor.interface import AlertRecord, Evidence, MonitorRepo, RejectRecord, ScoreRecord
from services.monitor.usecases.alerts import AlertRules, Change, Moods, Scored, tickers_in
from services.monitor.usecases.explain import CHUNK, attribute, variants
from services.monitor.usecases.items import Item, Rejected

log = logging.getLogger("llmk.monitor")
MAX_GROUP_WAIT = 0.25  # seconds the first item of an unfilled group waits for company


class Pending(Protocol):
    def result(self, timeout: float | None = None) -> dict[str, Any]: ...
    def ready(self) -> bool: ...


class Scoring(Protocol):
    """The inference tier as the monitor reaches it: classify texts with the model's own task."""

    def submit(self, texts: Sequence[str]) -> Pending: ...


@dataclass
class Summary:
    run: str
    model: str
    read: int = 0  # "in": every record read from the source
    scored: int = 0
    rejected: int = 0
    duplicates: int = 0  # items read again (redelivered, a repeated id): rejected, never scored twice
    alerts: int = 0
    versions: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def version(self) -> int | None:
        return self.versions[-1] if self.versions else None

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "run": self.run,
            "model": self.model,
            "in": self.read,
            "scored": self.scored,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "alerts": self.alerts,
            "versions": self.versions,
            "wall_seconds": round(time.monotonic() - self.started, 3),
            "latency_ms_p50": _quantile(lat, 0.5),
            "latency_ms_p99": _quantile(lat, 0.99),
        }


@dataclass
class MonitorConfig:
    model: str
    rules: AlertRules = field(default_factory=AlertRules)
    companies: Mapping[str, str] = field(default_factory=dict)  # company name -> ticker
    in_flight: int = 64  # items
    group: int = 8  # texts per message: the queue's cost per message is spread over them
    evidence_items: int = 3
    timeout: float = 300.0


@dataclass
class Opening:
    """An alert whose evidence is being explained: per evidence item, its words and the answers on the way."""

    change: Change
    at: datetime
    asked: list[tuple[Scored, list[str], list[Pending]]]

    def ready(self) -> bool:
        return all(p.ready() for _, _, answers in self.asked for p in answers)


class Monitor:
    def __init__(
        self,
        repo: MonitorRepo,
        scoring: Scoring,
        config: MonitorConfig,
        run: str,
        on_progress: Callable[[Summary], None] | None = None,
        on_alert: Callable[[AlertRecord], None] | None = None,
        on_done: Callable[[str], None] | None = None,
    ):
        self.repo, self.scoring, self.config = repo, scoring, config
        self.summary = Summary(run, config.model)
        self.moods = Moods(config.rules)
        self.on_progress = on_progress or (lambda _: None)
        self.on_alert = on_alert or (lambda _: None)
        self.on_done = on_done or (lambda _: None)  # an item is stored: its source may forget it
        self._open: dict[tuple[str, str], AlertRecord] = {}
        self._opening: dict[tuple[str, str], Opening] = {}  # explained while the stream flows on

    def run(self, items: Iterable[Item | Rejected | None], stop: threading.Event | None = None) -> Summary:
        """Score `items` to their end (or until `stop` is set); returns the counts.

        Items travel in groups of `group` texts per message (fewer when the source is slow); a None from
        `items` means the source is idle: every item in flight is finished and every alert whose
        evidence is on its way opens meanwhile, so alerts never wait for the next message."""
        self._pending: deque[tuple[list[tuple[Item, float]], Pending]] = deque()
        self._group: list[tuple[Item, float]] = []
        for entry in items:
            if entry is None:  # the source is idle: finish what is in flight, open what it explains
                self._send()
                self._finish(0)
                self._open_explained(wait=True)  # ready() may not see answers nobody waits on (rpc://)
                continue
            self.summary.read += 1
            if isinstance(entry, Rejected):
                self._reject(entry.id, entry.reason, entry.raw)
            else:
                self._group.append((entry, time.monotonic()))
                if (
                    len(self._group) >= self.config.group
                    or time.monotonic() - self._group[0][1] > MAX_GROUP_WAIT
                ):
                    self._send()
            self._finish(self.config.in_flight - 1)
            self._open_explained(wait=False)
            if stop is not None and stop.is_set():
                break
        self._send()
        self._finish(0)
        self._open_explained(wait=True)
        self.on_progress(self.summary)
        return self.summary

    def _send(self) -> None:
        if self._group:
            texts = [item.text for item, _ in self._group]
            self._pending.append((self._group, self.scoring.submit(texts)))
            self._group = []

    def _finish(self, keep: int) -> None:
        """Take answers, oldest first, until at most `keep` items are in flight."""
        while self._pending and sum(len(g) for g, _ in self._pending) > keep:
            group, answer = self._pending.popleft()
            try:
                result = answer.result(self.config.timeout)
            except Unavailable:
                raise  # no worker answered: stop rather than reject items that were never looked at
            except Exception as e:  # one text may spoil its group (too long...): score the rest alone
                if len(group) == 1:
                    self._reject(group[0][0].id, f"not scored: {e}", group[0][0].text)
                    continue
                for item, started in reversed(group):  # in stream order at the front
                    self._pending.appendleft(([(item, started)], self.scoring.submit([item.text])))
                continue
            for k, (item, started) in enumerate(group):
                self._complete(
                    item, started, {"version": result["version"], "results": [result["results"][k]]}
                )

    def _complete(self, item: Item, started: float, result: dict[str, Any]) -> None:
        scores = result["results"][0]
        version = int(result["version"])
        record = ScoreRecord(
            self.config.model,
            item.id,
            item.text,
            scores["label"],
            {k: round(float(v), 6) for k, v in scores["probabilities"].items()},
            version,
            round((time.monotonic() - started) * 1000, 3),
            tuple(tickers_in(item.text, self.config.companies)),
            item.fields,
            self.summary.run,
        )
        if not self.repo.add_score(record):  # read before (a redelivery, a repeated id): scored once
            self.summary.duplicates += 1
            self._reject(item.id, "already scored: an item with this id was read before", item.text)
            return
        self.on_done(item.id)
        s = self.summary
        s.scored += 1
        s.latencies_ms.append(record.latency_ms)
        if not s.versions or s.versions[-1] != version:
            s.versions.append(version)
        label_p = record.probabilities[record.label]
        for change in self.moods.add(
            Scored(item.id, item.text, record.label, label_p, record.tickers, version)
        ):
            self._alert(change)
        self.on_progress(s)

    def _reject(self, item_id: str, reason: str, raw: str) -> None:
        self.repo.add_reject(RejectRecord(self.config.model, item_id, reason, raw[:200], self.summary.run))
        self.on_done(item_id)
        self.summary.rejected += 1

    def _alert(self, change: Change) -> None:
        """Clear an open alert now; open one once its evidence is explained (the stream goes on meanwhile)."""
        key = (change.ticker, change.direction)
        if not change.cleared:
            self._opening[key] = self._ask_why(change)
            return
        if key in self._opening:  # cleared before its explanation came back: open it first
            self._open[key] = self._open_alert(self._opening.pop(key))
        if (opened := self._open.pop(key, None)) is not None:
            self.repo.clear_alert(opened.id, datetime.now(UTC), change.reason)
            log.warning("alert cleared: %s %s: %s", *key, change.reason)

    def _ask_why(self, change: Change) -> Opening:
        """Send the occluded variants of the items that moved the mood most, without waiting for them."""
        asked = []
        for scored in change.items[: self.config.evidence_items]:
            words, texts = variants(scored.text)
            answers = [self.scoring.submit(texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)]
            asked.append((scored, words, answers))
        return Opening(change, datetime.now(UTC), asked)

    def _open_explained(self, wait: bool) -> None:
        for key, opening in list(self._opening.items()):
            if wait or opening.ready():
                self._open[key] = self._open_alert(self._opening.pop(key))

    def _open_alert(self, opening: Opening) -> AlertRecord:
        change = opening.change
        evidence, version = self._evidence(opening)
        alert = self.repo.open_alert(
            AlertRecord(
                self.config.model,
                change.ticker,
                change.direction,
                opening.at,
                version,
                round(change.share, 4),
                change.mentions,
                evidence,
                run=self.summary.run,
            )
        )
        self.summary.alerts += 1
        log.warning(
            "alert: %s %s (%d of %d mentions) — %s",
            change.ticker,
            change.direction,
            round(change.share * change.mentions),
            change.mentions,
            "; ".join(f"{e.text[:60]!r} {[w for w, _ in e.top_tokens[:3]]}" for e in evidence),
        )
        self.on_alert(alert)
        return alert

    def _evidence(self, opening: Opening) -> tuple[list[Evidence], int]:
        """The items that moved the mood most, each with the words that drove its label."""
        change = opening.change
        out: list[Evidence] = []
        version = change.items[0].version if change.items else 0
        for scored, words, answers in opening.asked:
            try:
                # the words behind the alert's direction, on the version serving now (it may be newer)
                results = [a.result(self.config.timeout) for a in answers]
                why = attribute(scored.text, words, results, label=change.direction)
            except LlmkError as e:
                log.warning("could not explain item %s: %s", scored.item_id, e)
                continue
            version = why.version
            stored = (scored.label, round(scored.probability, 4), scored.version)
            explained = (why.label, round(why.probability, 4), why.top(5), why.version)
            out.append(Evidence(scored.item_id, scored.text, *explained, *stored))
        return out, version


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
