"""Code that runs in child processes (forked from a server that already imported torch and llmk,
so a child starts in milliseconds): a committer to kill, racers, and a reader that also collects."""

from __future__ import annotations

import gc
import multiprocessing
import random
import time
from multiprocessing.context import ForkServerContext
from typing import Any

import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from llmk.errors import Conflict

PRELOAD = [
    "torch",
    "safetensors.torch",
    "sqlalchemy",
    "psycopg",
    "services.store.usecases.store",
    "llmk.bootstrap",
    __name__,
]
TARGET = "w"  # the one tensor of the race model: [ROWS, COLS]
ROWS, COLS = 50, 8


def context() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def commit_forever(settings: Settings, model: str, names: list[str], seed: int, ready: Any) -> None:
    """Every kind of write the store makes, in a loop, until killed. `ready` is set once a commit went
    through, so every kill lands on a committer that makes progress, however busy the machine."""
    gc.freeze()  # the first collection would otherwise walk (and copy) every preloaded object: 0.2 s
    store = Deployment(settings).local_store()
    rng = random.Random(seed)
    while True:
        name, roll = rng.choice(names), rng.random()
        if roll < 0.5:
            store.commit(model, {name: _sparse([rng.randrange(64)], rng.uniform(-1, 1))})
            ready.set()
        elif roll < 0.75:
            current = store.fetch(model, names=[name])[name]
            current[rng.randrange(current.shape[0])] += 1
            store.commit_full(model, {name: current})
            ready.set()
        elif roll < 0.9:
            store.fetch(model)  # long chains write a cached snapshot
        elif roll < 0.95:
            store.squash(model)
        else:
            store.rollback(model, str(store.log(model, limit=3)[-1].id))


def race(settings: Settings, model: str, racer: int, commits: int, start: Any) -> None:
    """Add 1 to this racer's own values, one commit each, retrying on Conflict (compare-and-swap)."""
    store = Deployment(settings).local_store()
    start.wait()
    for k in range(commits):
        index = racer * commits + k
        while True:
            head = store.resolve(model, "main")
            try:
                store.commit(
                    model, {TARGET: _sparse([index], 1.0)}, "main", head, CommitInfo(author=f"r{racer}")
                )
                break
            except Conflict:
                time.sleep(random.uniform(0, 0.002))


def redeliver(settings: Settings, model: str, parent: int, start: Any, results: Any) -> None:
    """The same commit, same idempotency key, sent by several processes at once."""
    store = Deployment(settings).local_store()
    start.wait()
    info = CommitInfo(idempotency_key="job-1/step-1")
    results.put(store.commit(model, {TARGET: _sparse([0], 1.0)}, "main", parent, info).id)


def read_and_collect_forever(settings: Settings, model: str, stop: Any) -> None:
    """What runs beside writers: a reader of the head (which caches long chains) and GC."""
    store = Deployment(settings).local_store()
    while not stop.is_set():
        store.fetch(model)
        store.gc()
        time.sleep(0.01)


def _sparse(indices: list[int], value: float) -> Delta:
    return Delta(
        Kind.SPARSE, {"indices": torch.tensor(indices), "values": torch.full((len(indices),), value)}
    )
