"""Per-ticker mood over a sliding window of the stream, and the alerts that open and clear on it.

The window is the last `window` scored items of the whole stream. For each ticker mentioned in it, the
share of its mentions labelled negative (or positive) is its mood; an alert opens when a share reaches
`threshold` with at least `min_mentions` mentions, and clears when the share falls below `threshold`
by `hysteresis` or the mentions thin out, so one borderline item does not make an alert flicker.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CASHTAG = re.compile(r"\$([A-Za-z]{1,5}(?:\.[A-Za-z]{1,2})?)\b")
DIRECTIONS = ("negative", "positive")


def tickers_in(text: str, companies: Mapping[str, str] = {}) -> list[str]:
    """Cashtags ($AAPL) and the tickers of company names in `companies` (name -> ticker), in order."""
    found = [m.group(1).upper() for m in CASHTAG.finditer(text)]
    lowered = text.lower()
    found += [ticker for name, ticker in companies.items() if _mentions(lowered, name.lower())]
    return list(dict.fromkeys(found))


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w$]){re.escape(name)}(?!\w)", text) is not None


@dataclass(frozen=True)
class Scored:
    """One scored item as the alert logic sees it."""

    item_id: str
    text: str
    label: str
    probability: float  # of `label`
    tickers: tuple[str, ...]
    version: int


@dataclass(frozen=True)
class Change:
    """An alert opened (cleared=False) or cleared for `ticker`."""

    ticker: str
    direction: str
    cleared: bool
    share: float
    mentions: int
    items: tuple[Scored, ...]  # the window's items for this ticker that carry the direction's label
    reason: str = ""  # why it cleared, in words


@dataclass
class AlertRules:
    window: int = 200
    threshold: float = 0.6
    min_mentions: int = 5
    hysteresis: float = 0.1

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_mentions < 1:
            raise ValueError("window and min_mentions must be at least 1")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")


@dataclass
class Moods:
    """The sliding window and the alerts open on it; `add` returns what opened or cleared."""

    rules: AlertRules
    items: deque[Scored] = field(default_factory=deque)
    open: set[tuple[str, str]] = field(default_factory=set)  # (ticker, direction)

    def add(self, item: Scored) -> list[Change]:
        self.items.append(item)
        touched = set(item.tickers)
        if len(self.items) > self.rules.window:
            touched.update(self.items.popleft().tickers)
        touched.update(t for t, _ in self.open)  # an open alert may clear as its items leave
        return [c for t in sorted(touched) for c in self._check(t)]

    def share(self, ticker: str, direction: str) -> tuple[float, int]:
        labels = Counter(i.label for i in self.items if ticker in i.tickers)
        mentions = sum(labels.values())
        return (labels[direction] / mentions if mentions else 0.0), mentions

    def _check(self, ticker: str) -> Iterable[Change]:
        r = self.rules
        for direction in DIRECTIONS:
            share, mentions = self.share(ticker, direction)
            key = (ticker, direction)
            if key not in self.open and mentions >= r.min_mentions and share >= r.threshold:
                self.open.add(key)
                yield Change(ticker, direction, False, share, mentions, self._evidence(ticker, direction))
            elif key in self.open and (why := self._why_cleared(share, mentions)):
                self.open.discard(key)
                yield Change(ticker, direction, True, share, mentions, (), why)

    def _why_cleared(self, share: float, mentions: int) -> str:
        """Why an open alert clears now, or "" while it holds."""
        r = self.rules
        if mentions < r.min_mentions:
            return f"too few mentions: {mentions} in the window, fewer than --min-mentions {r.min_mentions}"
        floor = r.threshold - r.hysteresis
        if share < floor:
            return (
                f"share {share:.2f} fell below {floor:.2f} (threshold {r.threshold:.2f} minus hysteresis "
                f"{r.hysteresis:.2f})"
            )
        return ""

    def _evidence(self, ticker: str, direction: str) -> tuple[Scored, ...]:
        """The items that moved the share most: the direction's items, most confident first."""
        mine = [i for i in self.items if ticker in i.tickers and i.label == direction]
        return tuple(sorted(mine, key=lambda i: -i.probability))
