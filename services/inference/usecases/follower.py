"""Following a branch: each new version of the served branch is applied in place, between batches.

Events are queued by whichever thread delivers them and handled on the follower's own thread. The store
sends only what the worker lacks: the typed entries from the served version to the new one. Sparse, row and
low-rank entries are applied to plain weights in place (see patching.py); a weight held in another form
(int8, pruned, offloaded) or a full entry gets its whole new value. When the new version is not reached by
entries alone (a rollback or a squash lies between), the whole values of the tensors that changed are
fetched, as the store names them. An event is a hint: the worker moves to the branch head the store
reports, never to the version an event names. Everything is read before
anything stops; then, with no sequence decoding (the generator paused) and no batch computing (the batcher's
lock held), it is written and checked, and the new version is stamped, so no answer mixes two versions. All
or nothing: on a failure the tensors already written are read back from the store at the served version,
and the worker stays on it; the failure is logged, counted and kept in `error`. The branch head's id is also
polled now and then, which catches up with events that never arrived.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from llmk.config import Settings
from llmk.domain.versions import VersionEvent
from llmk.errors import InvalidDelta, LlmkError
from services.inference.engine import compute
from services.inference.engine.weights import set_weight, verify_weight
from services.inference.usecases.loading import Served
from services.inference.usecases.metrics import Metrics
from services.inference.usecases.patching import Patch, apply_in_place, plan
from services.store.interface import StoreClient

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

    def on_event(self, event: VersionEvent) -> None:
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
                events = [i for i in items if isinstance(i, VersionEvent)]
                self._catch_up(events, any(i is _CHECK for i in items))
            except Exception:  # the follower must survive a store outage; the next event or poll retries
                log.exception("could not follow the served branch")

    def _catch_up(self, events: list[VersionEvent], check_head: bool) -> None:
        with self.lock:
            served = self.current()
            if served is None or not served.branch:
                return
            mine = any(e.model == served.name and e.branch == served.branch for e in events)
            if not (mine or check_head):
                return
            # An event is only a hint (anyone on the exchange can publish one): the store's head is the
            # authority, so the worker moves only where the branch did, backwards only after a rollback.
            head = self.store.head(served.name, served.branch)
            if head != served.version:
                self._update(served, head)

    def _update(self, served: Served, target: int) -> None:
        start = time.perf_counter()
        try:
            patch, values = self._read(served, target)
            read = time.perf_counter()
            with served.generator.paused(self.settings.update_drain_seconds), served.batcher.lock:
                drained = time.perf_counter()
                compute.run(self._apply, served, patch, values)
                served.stamp(target)
            applied = time.perf_counter()
        except Exception as e:
            self.error = f"could not apply version {target}; still serving {served.version}: {e}"
            self.metrics.updates.labels("failed").inc()
            log.error("%s", self.error, exc_info=not isinstance(e, LlmkError))
            return
        self.error = ""
        self.metrics.updates.labels("applied").inc()
        self.metrics.update_seconds.observe(applied - start)
        self.applied()
        changed = len({n for n, _ in patch.in_place} | patch.whole)
        log.info(
            "%s: now serving version %s (%d tensors changed; read %.0f ms, drain %.0f ms, apply %.0f ms)",
            *(served.name, target, changed),
            *((read - start) * 1000, (drained - read) * 1000, (applied - drained) * 1000),
        )

    def _read(self, served: Served, target: int) -> tuple[Patch, dict[str, torch.Tensor]]:
        """The entries to apply in place, and the whole values of the other changed tensors."""
        steps = self.store.steps(served.name, served.version, target)
        if steps is not None:
            patch = plan(served.model, steps)
        else:  # the store names what changed: an event's list could be forged
            patch = Patch(whole=set(self.store.changed(served.name, served.version, target)))
        names = sorted(patch.whole)
        values = self.store.fetch(served.name, str(target), names=names) if names else {}
        if missing := sorted(set(names) - set(values)):
            raise InvalidDelta(f"version {target} lacks tensor(s) {missing[:5]} that the served model needs")
        return patch, values

    def _apply(self, served: Served, patch: Patch, values: dict[str, torch.Tensor]) -> None:
        done: list[str] = []
        try:
            for name, delta in patch.in_place:
                done.append(name)
                apply_in_place(served.model, name, delta)
            for name, value in values.items():
                done.append(name)
                set_weight(served.model, name, value)
                verify_weight(served.model, name, value)
        except Exception:
            self._restore(served, sorted(set(done)))
            raise

    def _restore(self, served: Served, names: list[str]) -> None:
        """Read the served values back from the store, whatever form (int8, offloaded) the weights take."""
        try:
            values = self.store.fetch(served.name, str(served.version), names=names)
            compute.run(_write_all, served.model, values)
        except Exception as e:
            served.broken = f"a failed update could not be undone ({e}); reload the model"
            log.exception("%s", served.broken)


def _write_all(model: torch.nn.Module, values: dict[str, torch.Tensor]) -> None:
    for name, value in values.items():
        set_weight(model, name, value)
