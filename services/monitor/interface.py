"""What the monitor keeps: every scored item, every rejected one (with why), and every alert (with why)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class ScoreRecord:
    model: str
    item_id: str
    text: str
    label: str
    probabilities: dict[str, float]
    version: int  # the version that computed this answer, all of it
    latency_ms: float  # from reading the item to storing its score
    tickers: tuple[str, ...] = ()
    fields: dict[str, Any] = field(default_factory=dict)  # the item's other columns, kept as given
    run: str = ""
    scored_at: datetime | None = None


@dataclass(frozen=True)
class RejectRecord:
    model: str
    item_id: str
    reason: str
    raw: str  # the start of what was read, for a person to look at
    run: str = ""
    rejected_at: datetime | None = None


@dataclass(frozen=True)
class Evidence:
    """An item that moved a ticker's mood, and the words that drove its label (occlusion attributions).

    The explanation runs on the version serving when the alert opens, which may be newer than the one that
    scored the item: both are kept, so the stored score is never contradicted by a later version's."""

    item_id: str
    text: str
    label: str  # the alert's direction, as the explanation's version scores the text
    probability: float
    top_tokens: list[tuple[str, float]]  # (word, drop in the label's probability without it)
    version: int = 0  # the version that computed the explanation
    scored_label: str = ""  # the stored score: its label, the label's probability, and its version
    scored_probability: float = 0.0
    scored_version: int = 0


@dataclass(frozen=True)
class AlertRecord:
    model: str
    ticker: str
    direction: str  # negative or positive
    opened: datetime
    version: int  # the version that scored the items and computed the explanations
    share: float
    mentions: int
    evidence: list[Evidence]
    cleared: datetime | None = None
    run: str = ""
    id: int = 0
    cleared_reason: str = ""  # too few mentions, or the share fell below threshold minus hysteresis


class MonitorRepo(Protocol):
    def add_score(self, record: ScoreRecord) -> bool:
        """Store a score; False (nothing written) when the item already has one."""
        ...

    def add_reject(self, record: RejectRecord) -> None: ...
    def open_alert(self, record: AlertRecord) -> AlertRecord: ...
    def clear_alert(self, alert_id: int, cleared: datetime, reason: str) -> None: ...
    def scores(
        self, model: str | None, ticker: str | None, since: datetime | None, run: str | None = None
    ) -> list[ScoreRecord]: ...
    def rejects(self, model: str | None, run: str | None = None) -> list[RejectRecord]: ...
    def alerts(self, model: str | None, run: str | None = None) -> list[AlertRecord]: ...
