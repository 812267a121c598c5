"""Prequential evaluation: replay interactions in time order; for each positive, the system recommends
first (the user's already-seen items excluded), then learns from it.

Time is the ratings' own clock: before each interaction every system is told its timestamp, so llmk online
commits a version every S seconds of that clock and serves it only `served_after` seconds later, as a
stream committing every S seconds with that interaction-to-served time would; ALS retrains on day changes.

Each positive is one test: ndcg@k is 1/log2(rank + 2) when the item is in the top k (else 0), recall@k is
1 or 0. The systems compared in one run see the same interactions and the same seen-item exclusions:
llmk online (serving the last committed version, learning through the streamer), llmk frozen, the most
popular items so far, and implicit's ALS retrained from scratch on everything seen once per day.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from services.rec.interface import Interaction
from services.rec.usecases.serving import Served
from services.rec.usecases.streaming import Streamer

if TYPE_CHECKING:
    from llmk.domain.deltas import Delta
    from llmk.domain.versions import Version

DAY = 86400


class System(Protocol):
    def at(self, timestamp: int) -> None: ...
    def recommend(self, user: int, k: int, exclude: frozenset[int]) -> list[int]: ...
    def learn(self, interaction: Interaction) -> None: ...


@dataclass
class Score:
    tests: int = 0
    ndcg: float = 0.0
    hits: int = 0
    users: set[int] = field(default_factory=set)

    def add(self, user: int, ranked: list[int], item: int, k: int) -> None:
        self.tests += 1
        self.users.add(user)
        if item in ranked[:k]:
            self.hits += 1
            self.ndcg += 1 / math.log2(ranked.index(item) + 2)

    def as_dict(self, k: int) -> dict[str, Any]:
        n = max(self.tests, 1)
        return {
            f"ndcg_at_{k}": round(self.ndcg / n, 5),
            f"recall_at_{k}": round(self.hits / n, 5),
            "users": len(self.users),
            "tests": self.tests,
        }


def prequential(
    history: Sequence[Interaction],
    stream: Sequence[Interaction],
    systems: dict[str, System],
    k: int,
    threshold: float,
    after: Callable[[Interaction, dict[str, Score]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each system's scores over the positives of `stream`; `history` only fills the seen-item sets.
    `after`, if given, sees the running scores after each interaction (a demo's timeline)."""
    seen: dict[int, set[int]] = defaultdict(set)
    for r in history:
        seen[r.user].add(r.item)
    scores = {name: Score() for name in systems}
    for r in stream:
        for system in systems.values():
            system.at(r.timestamp)
        if r.rating >= threshold and r.item not in seen[r.user]:
            exclude = frozenset(seen[r.user])
            for name, system in systems.items():
                scores[name].add(r.user, system.recommend(r.user, k, exclude), r.item, k)
        seen[r.user].add(r.item)
        for system in systems.values():
            system.learn(r)
        if after is not None:
            after(r, scores)
    return {name: {**s.as_dict(k), "interactions": len(stream)} for name, s in scores.items()}


class Llmk:
    """A served version; with a streamer, each interaction goes into the stream after it was served.

    A version the streamer commits (`publish`) is applied to the served copy once the ratings' clock has
    moved `served_after` seconds past its commit: the interaction-to-served time of a deployment."""

    def __init__(self, served: Served, streamer: Streamer | None = None, served_after: float = 0.0):
        self.served, self.streamer, self.served_after = served, streamer, served_after
        self.now = 0
        self._pending: deque[tuple[float, int, Mapping[str, Delta]]] = deque()

    def clock(self) -> float:
        """The ratings' clock, for a streamer committing every S seconds of it."""
        return self.now

    def publish(self, version: Version, entries: Mapping[str, Delta]) -> None:
        self._pending.append((self.now + self.served_after, version.id, entries))

    def at(self, timestamp: int) -> None:
        self.now = timestamp
        while self._pending and self._pending[0][0] <= timestamp:
            _, version, entries = self._pending.popleft()
            self.served.apply(version, entries)

    def recommend(self, user: int, k: int, exclude: frozenset[int]) -> list[int]:
        return [s.item for s in self.served.recommend(user, k, exclude).items]

    def learn(self, interaction: Interaction) -> None:
        if self.streamer is not None:
            self.streamer.offer(interaction)


class Popular:
    """The items with the most positives so far."""

    def __init__(self, history: Sequence[Interaction], threshold: float):
        self.threshold = threshold
        self.counts: Counter[int] = Counter(r.item for r in history if r.rating >= threshold)

    def at(self, timestamp: int) -> None:
        pass

    def recommend(self, user: int, k: int, exclude: frozenset[int]) -> list[int]:
        return [i for i, _ in self.counts.most_common(k + len(exclude)) if i not in exclude][:k]

    def learn(self, interaction: Interaction) -> None:
        if interaction.rating >= self.threshold:
            self.counts[interaction.item] += 1


class DailyAls:
    """implicit's ALS, retrained from scratch on every positive seen so far when a new day starts (before
    that day's first interaction is served); users it has not been trained on get the popular items."""

    def __init__(self, history: Sequence[Interaction], threshold: float, factors: int, seed: int):
        self.threshold, self.factors, self.seed = threshold, factors, seed
        self.positives = [(r.user, r.item) for r in history if r.rating >= threshold]
        self.popular = Popular(history, threshold)
        self.day = history[-1].timestamp // DAY if history else -1
        self.retrains = 0
        self._recommend: Callable[[int, int, frozenset[int]], list[int] | None] = lambda u, k, e: None
        self.retrain()

    def at(self, timestamp: int) -> None:
        day = timestamp // DAY
        if day != self.day:
            if self.day >= 0:
                self.retrain()
            self.day = day

    def recommend(self, user: int, k: int, exclude: frozenset[int]) -> list[int]:
        found = self._recommend(user, k, exclude)
        return found if found is not None else self.popular.recommend(user, k, exclude)

    def learn(self, interaction: Interaction) -> None:
        self.popular.learn(interaction)
        if interaction.rating >= self.threshold:
            self.positives.append((interaction.user, interaction.item))

    def retrain(self) -> None:
        from services.rec.usecases.als import train_als

        self._recommend = train_als(self.positives, self.factors, self.seed)
        self.retrains += 1
