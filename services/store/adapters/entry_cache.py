"""The entries of recently read or written versions, kept in memory by the catalog.

A version's entries never change once it is committed (versions are never deleted or edited), so a commit
or a read fetches from the database only the chain's version ids, not thousands of entry rows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from llmk.domain.versions import Entry


class EntryCache:
    def __init__(self, versions: int = 256):
        self.versions = versions
        self._cached: OrderedDict[int, tuple[Entry, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ids: Iterable[int]) -> dict[int, list[Entry]]:
        """The cached versions among `ids`, each as a list of its own."""
        with self._lock:
            return {i: list(self._cached[i]) for i in ids if i in self._cached}

    def put(self, entries: Mapping[int, list[Entry]]) -> None:
        with self._lock:
            for vid, found in entries.items():
                self._cached[vid] = tuple(found)
                self._cached.move_to_end(vid)
            while len(self._cached) > self.versions:
                self._cached.popitem(last=False)
