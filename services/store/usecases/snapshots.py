"""The snapshot cache: full materializations of long delta chains, kept within a byte budget.

Any reader may add to it (a long chain is read once, then served from one file), so it must never let
reads fill the disk: snapshots beyond the budget go, least recently used first, rows before files. It is
a cache, never the truth: a failure to write, touch or evict it is logged and the read goes on, and a
snapshot that turns out missing or damaged is dropped and read around (from the deltas, which are).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

import torch

from llmk.domain import deltas
from llmk.errors import Corrupt
from services.store.usecases import materialize
from services.store.usecases.commit_checks import Bounds, magnitude_metadata
from services.store.usecases.ports import Catalog, Objects

log = logging.getLogger(__name__)

T = TypeVar("T")
TOUCH_EVERY_S = 60.0  # how stale a snapshot's last-used time may get: eviction order needs no finer grain


class SnapshotCache:
    def __init__(
        self, catalog: Catalog, objects: Objects, budget_bytes: int, chain_length: int, bounds: Bounds
    ):
        self.catalog = catalog
        self.objects = objects
        self.bounds = bounds  # told each snapshot's values, so commits above it need not read them
        self.budget_bytes = budget_bytes
        self.chain_length = chain_length
        self._touched: dict[str, float] = {}  # snapshot -> when this process last marked it used

    def read(
        self, model: str, version_id: int, want: Callable[[str], bool]
    ) -> tuple[materialize.Plan, dict[str, torch.Tensor]]:
        """Plan and load a version, through its snapshot when it has a readable one."""
        return self.through(model, version_id, want, partial(materialize.load, self.objects))

    def through(
        self, model: str, version_id: int, want: Callable[[str], bool], read: Callable[[materialize.Plan], T]
    ) -> tuple[materialize.Plan, T]:
        """Plan a version and `read` it, through its snapshot when it has a readable one (a damaged one is
        dropped and the version read again from its deltas)."""
        p: materialize.Plan | None = None
        try:
            p = materialize.plan(self.catalog, self.objects, model, version_id, want)
            found = read(p)
        except Corrupt as e:
            if p is not None and p.snapshot is None:
                raise  # damage in the deltas themselves: never read around
            snapshot = self.catalog.chain(model, version_id)[1]
            if snapshot is not None:  # still listed, so damaged rather than evicted meanwhile: drop it
                log.warning("snapshot %s of %s@%s dropped: %s", snapshot[:12], model, version_id, e)
                self._forget(snapshot)
            p = materialize.plan(self.catalog, self.objects, model, version_id, want)
            return p, read(p)
        if p.snapshot:
            self._mark_used(p.snapshot)
        return p, found

    def locate(
        self, model: str, version_id: int, want: Callable[[str], bool], whole: bool
    ) -> materialize.Located:
        """Where a version lies, for a reader of the files. The cache treats it as a read: a whole version
        at the end of a long chain is read and cached first, and the snapshot it names is marked used."""
        located = materialize.locate(self.catalog, self.objects, model, version_id, want)
        if whole and located.plan.depth >= self.chain_length and _size(located.plan) <= self.budget_bytes:
            p, tensors = self.read(model, version_id, want)
            self.offer(version_id, p.depth, tensors)
            del tensors
            located = materialize.locate(self.catalog, self.objects, model, version_id, want)
        elif located.plan.snapshot:
            self._mark_used(located.plan.snapshot)
        return located

    def _mark_used(self, sha: str) -> None:
        """Record a snapshot's use, at most once a minute per process: a write per read of a hot
        snapshot cost about a quarter of serving it from the cache."""
        now = time.monotonic()
        if now - self._touched.get(sha, -math.inf) < TOUCH_EVERY_S:
            return
        self._touched[sha] = now
        self._quietly("mark a snapshot used", self.catalog.touch_snapshot, sha)

    def offer(self, version_id: int, depth: int, tensors: Mapping[str, torch.Tensor]) -> None:
        """Cache a full read of a long chain, if the budget allows; never fails the read."""
        if depth < self.chain_length or not tensors:
            return  # before the size: summing every tensor's bytes on each short read is not free
        if sum(t.numel() * t.element_size() for t in tensors.values()) > self.budget_bytes:
            return
        self._quietly("cache snapshot", self._add, version_id, tensors)

    def _add(self, version_id: int, tensors: Mapping[str, torch.Tensor]) -> None:
        magnitudes = {n: deltas.max_magnitude(deltas.full(t)) for n, t in tensors.items()}
        sha, size = self.objects.put_tensors(tensors, magnitude_metadata(magnitudes))
        self.bounds.remember(sha, magnitudes)
        self.catalog.add_snapshot(version_id, sha, size)
        self.evict()

    def evict(self) -> list[str]:
        """Drop least recently used snapshots until the cache fits its budget; returns their objects."""
        by_object: dict[str, int] = {}
        for s in self.catalog.snapshots():  # least recently used first; one object may serve several
            by_object.setdefault(s.object, s.size)
        total, dropped = sum(by_object.values()), []
        for sha, size in by_object.items():
            if total <= self.budget_bytes:
                break
            self._forget(sha)
            total -= size
            dropped.append(sha)
        return dropped

    def _forget(self, sha: str) -> None:
        self._touched.pop(sha, None)
        self.catalog.drop_snapshots(sha)
        self.objects.remove(sha, partial(self.catalog.is_referenced, sha))

    @staticmethod
    def _quietly(what: str, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # a cache failure (full disk, read-only folder, database hiccup) is no read failure
            log.warning("could not %s", what, exc_info=True)


def _size(p: materialize.Plan) -> int:
    """Bytes of the tensors a plan's entries end at (a lower bound when a snapshot holds others)."""
    newest = [entries[0] for entries in p.lineage.values()]
    return sum(math.prod(e.shape) * getattr(torch, e.dtype).itemsize for e in newest)
