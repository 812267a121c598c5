"""A rec worker: one model served from the store, following its branch between requests.

Version events are hints, queued by whatever thread delivers them and handled on the worker's own thread;
the worker then asks the store for the branch head and moves there, never to the version an event names.
Row updates arrive as the store's steps (each version's rows_set entries against the one before) and are
applied one version at a time under the Served lock, so an answer is scored by exactly one version. When no
steps lead to the head (a rollback or a squash lies between), the head is loaded whole and swapped in. A
failure is logged and kept in `error`; the worker stays on the version it serves and retries on the next
event or poll.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmk.errors import InvalidInput
from services.rec.interface import Recommendation
from services.rec.usecases import recommender
from services.rec.usecases.serving import Served

if TYPE_CHECKING:
    from llmk.domain.versions import VersionEvent
    from services.store.interface import StoreClient

log = logging.getLogger("llmk.rec")
_CHECK, _STOP = object(), object()  # inbox markers: compare with the branch head; stop following


class RecWorker:
    def __init__(self, store: StoreClient, model: str, ref: str | None = None, poll_seconds: float = 30.0):
        """Serve `model` at `ref` (default: the main branch); a branch is followed, a tag or id is not."""
        self.store, self.model = store, model
        self.branch = _branch(store, model, ref)
        self.served: Served = recommender.serve(store, model, ref)
        self.error = ""  # why the last update failed; empty after a successful one
        self.poll_seconds = poll_seconds
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._applied: list[Callable[[int], None]] = []
        self._thread = threading.Thread(target=self._loop, name="llmk-rec-follower", daemon=True)
        if self.branch:
            self._thread.start()
            self.check()  # a commit that landed while loading is caught up at once

    @property
    def version(self) -> int:
        return self.served.version

    def recommend(self, user: int, k: int = 10, exclude: frozenset[int] = frozenset()) -> Recommendation:
        return self.served.recommend(user, k, exclude)

    def on_event(self, event: VersionEvent) -> None:
        """A version event from any thread: queued, never applied on the caller's thread."""
        if event.model == self.model and event.branch == self.branch:
            self._inbox.put(event)

    def on_applied(self, callback: Callable[[int], None]) -> None:
        """Call `callback(version)` on the follower's thread after each version is served."""
        self._applied.append(callback)

    def check(self) -> None:
        self._inbox.put(_CHECK)

    def close(self) -> None:
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join(10)

    def _loop(self) -> None:
        while True:
            try:
                items = [self._inbox.get(timeout=self.poll_seconds or None)]
            except queue.Empty:
                items = [_CHECK]
            while not self._inbox.empty():  # a burst of events costs one look at the head
                items.append(self._inbox.get())
            if any(item is _STOP for item in items):
                return
            try:
                self.catch_up()
            except Exception as e:  # the worker must outlive a store outage; the next event or poll retries
                self.error = f"could not follow {self.model}@{self.branch}; serving {self.version}: {e}"
                log.exception("%s", self.error)

    def catch_up(self) -> None:
        """Move to the branch head the store reports, if the worker is not on it."""
        head = self.store.head(self.model, self.branch)
        current = self.served.version
        if head == current:
            return
        steps = self.store.steps(self.model, current, head)
        if steps is None:
            self.served = recommender.serve(self.store, self.model, str(head))
        else:
            for step in steps:
                self.served.apply(step.version, step.entries)
        self.error = ""
        log.info("%s: now serving version %d (from %d)", self.model, head, current)
        for callback in self._applied:
            callback(head)


def _branch(store: StoreClient, model: str, ref: str | None) -> str:
    """The branch `ref` names, or "" when it names a tag or a version id (served as pinned)."""
    if not ref:
        return "main"
    kinds = {r.name: r.kind for r in store.refs(model)}
    if ref in kinds:
        return ref if kinds[ref] == "branch" else ""
    if ref.isdigit():
        return ""
    raise InvalidInput(f"model {model!r} has no branch, tag or version {ref!r}")
