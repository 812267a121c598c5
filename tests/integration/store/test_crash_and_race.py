"""Real processes against a real database: a committer killed at random points, and racing writers.

Both run over SQLite and PostgreSQL (the `settings` fixture). A committed version must never point
at a missing or damaged file, and compare-and-swap must give every parent exactly one child.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections import Counter

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.domain.versions import CommitInfo
from services.store.usecases.store import Store
from tests.integration.store.store_processes import (
    COLS,
    ROWS,
    TARGET,
    commit_forever,
    context,
    race,
    read_and_collect_forever,
    redeliver,
)

pytestmark = pytest.mark.timeout(300)
KILLS = 50
RACERS, COMMITS = 8, 25


def assert_every_reference_verifies(store: Store) -> None:
    """Entries, cached snapshots and model files: each object exists and hashes to its name."""
    referenced = store.catalog.referenced_objects()
    assert referenced
    for sha in referenced:
        store.objects.verify(sha)  # raises Corrupt when missing, truncated or damaged


def assert_heads_materialize(store: Store, model: str, like: dict[str, torch.Tensor]) -> None:
    for ref in store.refs(model):
        values = store.fetch(model, ref.name)
        assert sorted(values) == sorted(like), f"{ref.name} lost tensors"
        assert all(bool(torch.isfinite(t).all()) for t in values.values())


def test_a_killed_committer_never_leaves_a_version_without_its_file(tiny) -> None:
    settings = tiny.settings.model_copy(update={"cache_chain_length": 4, "auto_migrate": False})
    names = sorted(n for n in tiny.tensors if n.startswith("model.layers."))
    ctx, rng = context(), random.Random(20240601)
    for i in range(KILLS):
        ready = ctx.Event()
        child = ctx.Process(target=commit_forever, args=(settings, tiny.model, names, i, ready), daemon=True)
        child.start()
        assert ready.wait(60), "the committer did not start"
        time.sleep(rng.uniform(0, 0.2))
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        assert child.exitcode == -signal.SIGKILL, f"the committer stopped by itself ({child.exitcode})"

    store = Deployment(settings).local_store()  # a fresh process view: nothing verified from memory
    try:
        versions = store.catalog.versions(tiny.model)
        assert len(versions) > 10, "the committer hardly ever got a commit through"
        assert_every_reference_verifies(store)
        assert_heads_materialize(store, tiny.model, tiny.tensors)
        after = store.commit_full(tiny.model, {"model.norm.weight": torch.zeros(64)})
        assert store.version(tiny.model).id == after.id, "a killed writer left the branch locked"

        collector = Deployment(settings.model_copy(update={"gc_grace_seconds": 0})).local_store()
        collector.gc()  # the unreferenced files and temp files the kills left behind
        on_disk = {sha for sha, _ in collector.objects.list()}
        assert on_disk == store.catalog.referenced_objects()
        assert list(collector.objects.temp_files()) == []
        assert_every_reference_verifies(Deployment(settings).local_store())
        assert_heads_materialize(store, tiny.model, tiny.tensors)
        collector.catalog.engine.dispose()
    finally:
        store.catalog.engine.dispose()


def test_racing_committers_each_get_their_own_parent(store, settings) -> None:
    root = store.create_model("race", {TARGET: torch.zeros(ROWS, COLS)}, {}, {}, CommitInfo()).id
    child_settings = settings.model_copy(update={"auto_migrate": False})
    ctx = context()
    start, stop = ctx.Event(), ctx.Event()
    racers = [
        ctx.Process(target=race, args=(child_settings, "race", r, COMMITS, start), daemon=True)
        for r in range(RACERS)
    ]
    reader_settings = child_settings.model_copy(update={"gc_grace_seconds": 60, "cache_chain_length": 8})
    collector = ctx.Process(
        target=read_and_collect_forever, args=(reader_settings, "race", stop), daemon=True
    )
    for p in [*racers, collector]:
        p.start()
    start.set()
    for p in racers:
        p.join(240)
    stop.set()
    collector.join(30)
    assert [p.exitcode for p in racers] == [0] * RACERS
    assert collector.exitcode == 0

    versions = store.catalog.versions("race")
    assert len(versions) == 1 + RACERS * COMMITS, "a failed compare-and-swap left a version behind"
    children = Counter(v.parent for v in versions)
    assert children[None] == 1, "not exactly one version without a parent"
    assert max(children.values()) == 1, "a parent got two children"
    log = store.log("race", limit=10_000)
    assert [v.id for v in reversed(log)] == sorted(v.id for v in versions)
    assert log[-1].id == root
    assert all(newer.parent == older.id == newer.basis for newer, older in itertools.pairwise(log))
    assert Counter(v.author for v in log[:-1]) == {f"r{r}": COMMITS for r in range(RACERS)}

    values = store.fetch("race")[TARGET].view(-1)
    assert torch.equal(values[: RACERS * COMMITS], torch.ones(RACERS * COMMITS)), "an update was lost"
    assert not values[RACERS * COMMITS :].any()
    assert_every_reference_verifies(Deployment(settings).local_store())


def test_a_commit_redelivered_concurrently_is_stored_once(store, settings) -> None:
    root = store.create_model("race", {TARGET: torch.zeros(ROWS, COLS)}, {}, {}, CommitInfo()).id
    ctx = context()
    start, results = ctx.Event(), ctx.Queue()
    child_settings = settings.model_copy(update={"auto_migrate": False})
    senders = [
        ctx.Process(target=redeliver, args=(child_settings, "race", root, start, results), daemon=True)
        for _ in range(4)
    ]
    for p in senders:
        p.start()
    start.set()
    ids = [results.get(timeout=60) for _ in senders]
    for p in senders:
        p.join(30)
    assert [p.exitcode for p in senders] == [0] * len(senders)
    assert len(set(ids)) == 1, f"one commit became versions {sorted(set(ids))}"
    assert [v.id for v in store.catalog.versions("race")] == [root, ids[0]]
    assert store.fetch("race")[TARGET][0, 0] == 1.0, "the change was applied once"
