"""Recommendations from one version of a model, and row updates applied to it in place between requests.

A Served holds its own copy of the tables. `apply` takes a committed version's rows_set entries (what a
follower fetches, or what an in-process stream hands over) and writes them under a lock, so one answer is
never computed half from one version and half from the next.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import torch

from llmk.domain import deltas
from llmk.domain.deltas import Delta
from llmk.errors import InvalidInput
from services.rec.interface import RecConfig, Recommendation, Scored
from services.rec.usecases.model import (
    ITEM_BIAS,
    ITEM_EMBEDDING,
    ITEM_IDS,
    ITEM_POSITIVES,
    USER_EMBEDDING,
    USER_IDS,
    Rows,
    Tables,
)

MAX_K = 1000


class Served:
    def __init__(self, tables: Tables, version: int, titles: Mapping[int, str]):
        self.t = {name: t.clone() for name, t in tables.t.items()}
        self.config: RecConfig = tables.config
        self.titles = titles
        self._version = version
        self._users = Rows(self.t[USER_IDS], "user")
        self._items = Rows(self.t[ITEM_IDS], "item")
        self._lock = threading.Lock()

    @property
    def version(self) -> int:
        return self._version

    def knows(self, user: int) -> bool:
        return user in self._users.of

    def apply(self, version: int, entries: Mapping[str, Delta]) -> None:
        """Write a committed version's entries (row deltas of this model's tensors) in place."""
        unknown = sorted(set(entries) - set(self.t))
        if unknown:
            raise InvalidInput(f"version {version} changes tensors this recommender does not hold: {unknown}")
        with self._lock:
            for name, delta in entries.items():
                self.t[name] = deltas.apply(self.t[name], delta)
            self._users = Rows(self.t[USER_IDS], "user")
            self._items = Rows(self.t[ITEM_IDS], "item")
            self._version = version

    def recommend(self, user: int, k: int = 10, exclude: frozenset[int] = frozenset()) -> Recommendation:
        if not 1 <= k <= MAX_K:
            raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}")
        with self._lock:
            n = len(self._items)
            row = self._users.get(user)
            if row is None:  # an unknown user: the items most liked so far
                scores = self.t[ITEM_POSITIVES][:n].clone()
            else:
                scores = self.t[ITEM_EMBEDDING][:n] @ self.t[USER_EMBEDDING][row] + self.t[ITEM_BIAS][:n]
            ids = self.t[ITEM_IDS][:n].clone()
            version, items = self._version, self._items
        top = _top(scores, ids, items, exclude, k)
        scored = [Scored(item, self.titles.get(item, ""), score) for item, score in top]
        return Recommendation(user, version, scored, popular=row is None)


def _top(
    scores: torch.Tensor, ids: torch.Tensor, items: Rows, exclude: frozenset[int], k: int
) -> list[tuple[int, float]]:
    hidden = [items.of[i] for i in exclude if i in items.of]
    if hidden:
        scores[torch.tensor(hidden)] = float("-inf")
    count = min(k, scores.numel() - len(hidden))
    if count <= 0:
        return []
    best = torch.topk(scores, count)
    return list(zip(ids[best.indices].tolist(), best.values.tolist(), strict=True))
