"""Following a branch: each new version of the served branch is applied in place, between batches.

Events are queued by whichever thread delivers them and handled on the follower's own thread. Only the
tensors that changed are fetched (the union along an unbroken chain of events; on a gap or a rollback the
store says what differs), before anything stops. Then, with no sequence decoding (the generator paused)
and no batch computing (the batcher's lock held), they are written, each checked against what the store
sent, and the new version is stamped, so no answer mixes two versions. All or nothing: on a failure the
tensors already written are read back from the store at the served version, and the worker stays on it;
the failure is logged, counted and kept in `error`. The branch head is also checked now and then, which
catches up with events that never arrived.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from llmk.client import StoreClient
from llmk.config import Settings
from llmk.errors import InvalidDelta, LlmkError
from services.inference.engine.weights import set_weight, verify_weight
from services.inference.loading import Served
from services.inference.metrics import Metrics

log = logging.getLogger("llmk.inference")
_CHECK, _STOP = object(), object()  # inbox markers: compare with the branch head; stop following


class Follower:
    def __init__(
        self,
        store: StoreClient,
        settings: Settings,
        metrics: Metrics,
        current: Callable[[], Served | None],
        lock: threading.RLock,
        applied: Callable[[], None],
    ):
        """`current` gives the served model, `lock` keeps loads and updates apart, `applied` is called after
        each new version."""
        self.store, self.settings, self.metrics = store, settings, metrics
        self.current, self.lock, self.applied = current, lock, applied
        self.error = ""  # why the last update failed; empty after a successful one
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="llmk-version-follower", daemon=True)
        self._thread.start()

    def on_event(self, event: dict[str, Any]) -> None:
        """A version event from any thread (the publisher's, in embedded mode): queued, never applied here."""
        self._inbox.put(event)

    def check(self) -> None:
        """Compare the served version with the branch head soon."""
        self._inbox.put(_CHECK)

    def close(self) -> None:
        self._inbox.put(_STOP)
        self._thread.join(10)

    def _loop(self) -> None:
        poll = self.settings.version_poll_seconds or None
        while True:
            try:
                items = [self._inbox.get(timeout=poll)]
            except queue.Empty:
                items = [_CHECK]
            while not self._inbox.empty():
                items.append(self._inbox.get())
            if any(item is _STOP for item in items):
                return
            try:
                self._catch_up([i for i in items if isinstance(i, dict)], any(i is _CHECK for i in items))
            except Exception:  # the follower must survive a store outage; the next event or poll retries
                log.exception("could not follow the served branch")

    def _catch_up(self, events: list[dict[str, Any]], check_head: bool) -> None:
        with self.lock:
            served = self.current()
            if served is None or not served.branch:
                return
            mine = [e for e in events if e.get("model") == served.name and e.get("branch") == served.branch]
            if check_head:  # what changed since the parent is unknown here (rollbacks, squashes): diff
                head = self.store.version(served.name, served.branch)
                mine.append({"version": head.id, "parent": None, "changed": None})
            newer = sorted((e for e in mine if int(e["version"]) > int(served.version)), key=_version_of)
            if newer:
                self._update(served, str(newer[-1]["version"]), changed_since(served.version, newer))

    def _update(self, served: Served, target: str, names: list[str] | None) -> None:
        start = time.perf_counter()
        try:
            if names is None:  # a gap in the events or a rollback: ask the store what differs
                names = [c.name for c in self.store.diff(served.name, served.version, target)]
            tensors = self.store.fetch(served.name, target, names=names) if names else {}
            if missing := sorted(set(names) - set(tensors)):
                raise InvalidDelta(
                    f"version {target} lacks tensor(s) {missing[:5]} that the served model needs"
                )
            with served.generator.paused(self.settings.update_drain_seconds), served.batcher.lock:
                self._apply(served, tensors)
                served.stamp(target)
        except Exception as e:
            self.error = f"could not apply version {target}; still serving {served.version}: {e}"
            self.metrics.updates.labels("failed").inc()
            log.error("%s", self.error, exc_info=not isinstance(e, LlmkError))
            return
        self.error = ""
        self.metrics.updates.labels("applied").inc()
        self.metrics.update_seconds.observe(time.perf_counter() - start)
        self.applied()
        log.info("%s: now serving version %s (%d tensors changed)", served.name, target, len(tensors))

    def _apply(self, served: Served, tensors: dict[str, torch.Tensor]) -> None:
        done: list[str] = []
        try:
            for name, value in tensors.items():
                done.append(name)
                set_weight(served.model, name, value)
                verify_weight(served.model, name, value)
        except Exception:
            self._restore(served, done)
            raise

    def _restore(self, served: Served, names: list[str]) -> None:
        """Read the served values back from the store, whatever form (int8, offloaded) the weights take."""
        try:
            for name, value in self.store.fetch(served.name, served.version, names=names).items():
                set_weight(served.model, name, value)
        except Exception as e:
            served.broken = f"a failed update could not be undone ({e}); reload the model"
            log.exception("%s", served.broken)


def changed_since(served: str, events: list[dict[str, Any]]) -> list[str] | None:
    """The union of the changed tensors along an unbroken chain of events from `served`; None for a gap."""
    names: set[str] = set()
    current = served
    for e in events:
        if str(e["version"]) == current:  # the same event twice, or the head check of an announced version
            continue
        if str(e.get("parent")) != current or e.get("changed") is None:
            return None
        names.update(e["changed"])
        current = str(e["version"])
    return sorted(names)


def _version_of(event: dict[str, Any]) -> int:
    return int(event["version"])
