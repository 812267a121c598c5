"""Online learning from a stream of interactions: touched rows only, committed as rows_set versions.

Each positive interaction takes one BPR step (the kernel's SGD, llmk.domain.optim) on the user's row, the
item's row and a few sampled items' rows; a new user or item first takes a spare row. Every `every`
interactions or `every_seconds` seconds the changed rows are committed as a version holding only those rows.
Every record read is counted once: applied, or rejected with its reason (in = applied + rejected).
The watermark (latest timestamp, and the interactions at it) rides in the version's metadata, so a later
stream refuses what an earlier one already applied.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from llmk.domain.deltas import Delta
from llmk.domain.optim import OptimizerSpec, optimizer_step
from llmk.domain.versions import CommitInfo, Version
from services.rec.interface import RATING_RANGE, Interaction, Rejection, StreamSummary
from services.rec.usecases.model import (
    ITEM_BIAS,
    ITEM_EMBEDDING,
    ITEM_POSITIVES,
    USER_EMBEDDING,
    Tables,
    touched_bytes,
)
from services.rec.usecases.training import bpr_row_gradients

META_KEY = "rec"


class Committer(Protocol):
    """The store as the stream reaches it (services.store.interface.StoreClient has this method)."""

    def commit(
        self,
        model: str,
        entries: Mapping[str, Delta],
        branch: str = "main",
        parent: int | None = None,
        info: CommitInfo = ...,
    ) -> Version: ...


@dataclass
class Watermark:
    timestamp: int = -1
    keys: set[tuple[int, int]] = field(default_factory=set)  # (user, item) applied at `timestamp`

    def as_metadata(self) -> dict[str, Any]:
        return {"watermark": self.timestamp, "at_watermark": sorted(self.keys)}

    @staticmethod
    def of(metadata: dict[str, Any]) -> Watermark:
        found = metadata.get(META_KEY) or {}
        return Watermark(int(found.get("watermark", -1)), {(u, i) for u, i in found.get("at_watermark", [])})


@dataclass(frozen=True)
class CommitPolicy:
    every: int = 0  # interactions per version (0: not by count)
    every_seconds: float = 0.0  # seconds per version (0: not by time)


Published = Callable[[Version, dict[str, Delta]], None]


class Streamer:
    """Applies interactions to a working copy of the tables and commits the changed rows."""

    def __init__(
        self,
        store: Committer,
        model: str,
        branch: str,
        head: Version,
        tables: Tables,
        policy: CommitPolicy,
        on_commit: Published | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store, self.model, self.branch, self.head = store, model, branch, head
        self.tables, self.policy, self.on_commit, self.clock = tables, policy, on_commit, clock
        self.watermark = Watermark.of(head.metadata)
        self.summary = StreamSummary()
        self._seen: set[tuple[int, int, int]] = set()
        self.applied_pairs: list[tuple[int, int]] = []  # (user, item) since the last commit, for seen-indexes
        self._since_commit = 0
        self._last_commit = clock()
        self._generator = torch.Generator().manual_seed(tables.config.seed + head.id)
        self._sgd = OptimizerSpec(kind="sgd", lr=tables.config.lr)

    def offer(self, record: Interaction | Rejection) -> None:
        """Count one record read from the source; apply it or record why not; commit when due."""
        self.summary.read += 1
        why = self._refusal(record)
        if why is not None:
            raw = record.raw if isinstance(record, Rejection) else str(record)
            self.summary.reject(Rejection(self.summary.read, why[1], raw), why[0])
        else:
            assert isinstance(record, Interaction)
            self._apply(record)
        self.maybe_commit()

    def consume(self, records: Iterable[Interaction | Rejection | None]) -> StreamSummary:
        """Offer every record; a None is a tick from an idle source, so a timed commit is not held back
        waiting for the next record."""
        for record in records:
            if record is None:
                self.maybe_commit()
            else:
                self.offer(record)
        self.commit()
        return self.summary

    def _refusal(self, record: Interaction | Rejection) -> tuple[str, str] | None:
        if isinstance(record, Rejection):
            return ("malformed", record.reason)
        low, high = RATING_RANGE
        if not low <= record.rating <= high:
            return ("rating_out_of_range", f"rating {record.rating} is outside [{low}, {high}]")
        mark = self.watermark
        if record.key in self._seen or (record.timestamp == mark.timestamp and record.key[:2] in mark.keys):
            return ("duplicate", f"interaction {record.key} was already applied")
        if record.timestamp < mark.timestamp:
            return ("timestamp_backwards", f"timestamp {record.timestamp} is before {mark.timestamp}")
        return self._fits(record)

    def _fits(self, record: Interaction) -> tuple[str, str] | None:
        """Why a new user or item cannot take a row: both fit, or the interaction is refused whole."""
        for table, key in ((self.tables.users, record.user), (self.tables.items, record.item)):
            if key not in table.of and len(table) >= table.capacity:
                return (
                    "table_full",
                    f"the {table.kind} table is full ({table.capacity} rows); {table.kind} {key} refused",
                )
        return None

    def _rows(self, record: Interaction) -> tuple[int, int]:
        self.summary.appended_users += record.user not in self.tables.users.of
        self.summary.appended_items += record.item not in self.tables.items.of
        return self.tables.user_row(record.user), self.tables.item_row(record.item)

    def _apply(self, record: Interaction) -> None:
        user, item = self._rows(record)
        self._seen.add(record.key)
        self.applied_pairs.append(record.key[:2])
        if record.timestamp > self.watermark.timestamp:
            self.watermark = Watermark(record.timestamp, set())
        self.watermark.keys.add(record.key[:2])
        if record.rating >= self.tables.config.positive_threshold:
            self.tables.t[ITEM_POSITIVES][item] += 1
            self.tables.touch((ITEM_POSITIVES,), [item])
            self._step(user, item)
        self.summary.applied += 1
        self._since_commit += 1

    def _step(self, user: int, item: int) -> None:
        """One BPR step by SGD on the user's row and the positive's and sampled negatives' rows."""
        t, config = self.tables.t, self.tables.config
        drawn = torch.randint(len(self.tables.items), (config.online_negatives,), generator=self._generator)
        negatives = drawn[drawn != item].unique()
        if negatives.numel() == 0:
            return
        rows = torch.cat([torch.tensor([item]), negatives])
        params = {
            "user": t[USER_EMBEDDING][user : user + 1],
            "item": t[ITEM_EMBEDDING][rows],
            "bias": t[ITEM_BIAS][rows],
        }
        grads = bpr_row_gradients(params["user"], params["item"], params["bias"], config.weight_decay)
        updates = optimizer_step(self._sgd, params, grads, {})
        t[USER_EMBEDDING][user] += updates["user"][0]
        t[ITEM_EMBEDDING][rows] += updates["item"]
        t[ITEM_BIAS][rows] += updates["bias"]
        self.tables.touch((USER_EMBEDDING,), [user])
        self.tables.touch((ITEM_EMBEDDING, ITEM_BIAS), rows.tolist())

    def maybe_commit(self) -> Version | None:
        p = self.policy
        due = (p.every and self._since_commit >= p.every) or (
            p.every_seconds and self.clock() - self._last_commit >= p.every_seconds
        )
        return self.commit() if due else None

    def commit(self) -> Version | None:
        """Commit the rows changed since the last version (none changed: no version)."""
        self._last_commit = self.clock()
        if not self.tables.pending():
            self._since_commit = 0
            return None
        entries = self.tables.take_changes()
        info = CommitInfo(
            author="llmk-rec-stream",
            message=f"rec stream: {self._since_commit} interactions",
            metadata={META_KEY: self.watermark.as_metadata()},
        )
        version = self.store.commit(self.model, entries, self.branch, self.head.id, info)
        self.head, self._since_commit = version, 0
        self.summary.versions.append(version.id)
        self.summary.version_bytes.append(sum(d.nbytes for d in entries.values()))
        self.summary.touched_bytes.append(touched_bytes(entries))
        if self.on_commit is not None:
            self.on_commit(version, entries)
        self.applied_pairs = []
        return version
