"""The recommender's parameters as tensors of a stored version, and the row bookkeeping around them.

Each table is allocated once at its configured capacity; rows past the known ids are spare (zeros, id -1).
A new user or item takes the next spare row, so growth writes only that row (a rows_set delta), never the
table. The id->row mapping is itself a tensor (`user.ids`, `item.ids`: the external id held by each row),
so it is stored, versioned and rolled back with the rows it indexes, and exact: no hashing, no collisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from llmk.domain.deltas import Delta, Kind
from llmk.errors import InvalidInput, ResourceExhausted
from services.rec.interface import RecConfig

USER_EMBEDDING = "user.embedding"  # [max_users, dim] f32
USER_IDS = "user.ids"  # [max_users] i64, -1: spare row
ITEM_EMBEDDING = "item.embedding"  # [max_items, dim] f32
ITEM_BIAS = "item.bias"  # [max_items] f32
ITEM_POSITIVES = "item.positives"  # [max_items] f32: positives seen, for the popular fallback
ITEM_IDS = "item.ids"  # [max_items] i64, -1: spare row
NAMES = (USER_EMBEDDING, USER_IDS, ITEM_EMBEDDING, ITEM_BIAS, ITEM_POSITIVES, ITEM_IDS)
FREE = -1


class TableFull(ResourceExhausted):
    """A table has no spare row left for a new id (its configured maximum is reached)."""


def empty_tensors(config: RecConfig) -> dict[str, Tensor]:
    if config.dim < 1 or config.max_users < 1 or config.max_items < 2:
        raise InvalidInput(
            f"dim must be >= 1, max_users >= 1 and max_items >= 2, got {config.dim}, "
            f"{config.max_users}, {config.max_items}"
        )
    u, i, d = config.max_users, config.max_items, config.dim
    return {
        USER_EMBEDDING: torch.zeros(u, d),
        USER_IDS: torch.full((u,), FREE, dtype=torch.int64),
        ITEM_EMBEDDING: torch.zeros(i, d),
        ITEM_BIAS: torch.zeros(i),
        ITEM_POSITIVES: torch.zeros(i),
        ITEM_IDS: torch.full((i,), FREE, dtype=torch.int64),
    }


@dataclass
class Rows:
    """One id->row mapping over a capacity-sized ids tensor; rows are taken in order, never freed."""

    ids: Tensor  # [capacity] i64
    kind: str  # "user" or "item", for messages
    of: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        used = self.ids[self.ids != FREE]
        if used.numel() and int((self.ids[: used.numel()] == FREE).sum()):
            raise InvalidInput(f"stored {self.kind}.ids has spare rows between used ones")
        listed = used.tolist()
        self.of = {int(x): row for row, x in enumerate(listed)}
        if len(self.of) != len(listed):
            raise InvalidInput(f"stored {self.kind}.ids names an id twice")

    def __len__(self) -> int:
        return len(self.of)

    @property
    def capacity(self) -> int:
        return self.ids.shape[0]

    def get(self, key: int) -> int | None:
        return self.of.get(key)

    def add(self, key: int) -> int:
        """The row of `key`, taking the next spare row for a new id."""
        found = self.of.get(key)
        if found is not None:
            return found
        row = len(self.of)
        if row >= self.capacity:
            raise TableFull(
                f"the {self.kind} table is full ({self.capacity} rows); {self.kind} {key} refused"
            )
        self.ids[row] = key
        self.of[key] = row
        return row


class Tables:
    """The working copy of a model's tensors, the id maps, and the rows changed since the last take."""

    def __init__(self, tensors: Mapping[str, Tensor], config: RecConfig):
        missing = sorted(set(NAMES) - set(tensors))
        if missing:
            raise InvalidInput(f"not a recommender model: it lacks tensors {missing}")
        self.config = config
        self.t = {name: tensors[name].clone() for name in NAMES}
        self.users = Rows(self.t[USER_IDS], "user")
        self.items = Rows(self.t[ITEM_IDS], "item")
        self._touched: dict[str, set[int]] = {name: set() for name in NAMES}

    def user_row(self, user: int) -> int:
        known = self.users.get(user)
        row = self.users.add(user)
        if known is None:
            self.touch((USER_IDS,), [row])
        return row

    def item_row(self, item: int) -> int:
        known = self.items.get(item)
        row = self.items.add(item)
        if known is None:
            self.touch((ITEM_IDS,), [row])
        return row

    def touch(self, names: Iterable[str], rows: Iterable[int]) -> None:
        listed = list(rows)
        for name in names:
            self._touched[name].update(listed)

    def pending(self) -> int:
        return sum(len(rows) for rows in self._touched.values())

    def take_changes(self) -> dict[str, Delta]:
        """Rows changed since the last take, as exact rows_set entries (values copied); then forget them."""
        entries: dict[str, Delta] = {}
        for name, rows in self._touched.items():
            if rows:
                ids = torch.tensor(sorted(rows), dtype=torch.int32)
                entries[name] = Delta(
                    Kind.ROWS_SET, {"rows": ids, "values": self.t[name][ids.long()].clone()}
                )
            rows.clear()
        return entries


def touched_bytes(entries: Mapping[str, Delta]) -> int:
    """The bytes of the changed rows' values alone: what any row sync must move at the least."""
    return sum(d.parts["values"].numel() * d.parts["values"].element_size() for d in entries.values())
