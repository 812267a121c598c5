"""Which items each user has interacted with, per model: for `recommend --exclude-seen`.

A SQLite file under LLMK_HOME (the tier's own table): training writes its ratings, the stream appends what
it applied. It is an index beside the model, not part of it: the model's versions never depend on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS seen"
    " (model TEXT, user INTEGER, item INTEGER, PRIMARY KEY (model, user, item))"
)


class SeenLog:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute(SCHEMA)

    def add(self, model: str, pairs: Iterable[tuple[int, int]]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", ((model, u, i) for u, i in pairs)
            )

    def items(self, model: str, user: int) -> frozenset[int]:
        found = self._db.execute("SELECT item FROM seen WHERE model = ? AND user = ?", (model, user))
        return frozenset(row[0] for row in found)

    def forget(self, model: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM seen WHERE model = ?", (model,))

    def close(self) -> None:
        self._db.close()
