"""Garbage collection removes only unreferenced object files, and only once they are past the grace period."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from llmk.errors import Conflict

HOUR = 3600.0


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def sparse(index: int, value: float = 1.0) -> Delta:
    return Delta(Kind.SPARSE, {"indices": torch.tensor([index]), "values": torch.tensor([value])})


def test_unreferenced_files_go_only_after_the_grace_period(tiny) -> None:
    store, model = tiny.store, tiny.model
    assert store.gc_grace_seconds == HOUR
    v2 = store.commit(model, {"model.norm.weight": sparse(0)})
    store.rollback(model, str(tiny.version))
    orphan, _ = store.objects.put_bytes(b"written by a commit that then failed")
    temp = store.objects.root / "tmp" / "interrupted.safetensors"
    temp.write_bytes(b"half a file")
    referenced = store.catalog.referenced_objects()
    assert orphan not in referenced

    assert store.gc() == []
    assert store.objects.path(orphan).exists()
    assert temp.exists()

    for _, path in store.objects.list():  # everything is old now, referenced or not
        age(path, 2 * HOUR)
    age(temp, 2 * HOUR)
    assert store.gc(dry_run=True) == [orphan]
    assert store.objects.path(orphan).exists()
    assert temp.exists()
    assert store.gc() == [orphan]
    assert not store.objects.path(orphan).exists()
    assert not temp.exists()
    assert {sha for sha, _ in store.objects.list()} == referenced

    fresh = Deployment(tiny.settings).local_store()  # verifies from disk, not from this process's memory
    for sha in referenced:
        fresh.objects.verify(sha)
    assert torch.equal(fresh.fetch(model, str(v2.id))["model.norm.weight"][0], torch.tensor(2.0))
    assert fresh.file(model, "config.json") == tiny.store.file(model, "config.json")
    fresh.catalog.engine.dispose()


def test_with_no_grace_period_every_referenced_file_survives(tiny) -> None:
    settings = tiny.settings.model_copy(update={"gc_grace_seconds": 0, "cache_chain_length": 2})
    store, model = Deployment(settings).local_store(), tiny.model
    try:
        head = tiny.version
        for i in range(3):
            head = store.commit(model, {"model.layers.0.mlp.up_proj.weight": sparse(i)}, "main", head).id
        expected = store.fetch(model)  # also caches a snapshot of the chain
        assert store.catalog.chain(model, head)[1] is not None
        store.tag(model, "pinned", str(head))
        squashed = store.squash(model)
        rollback = store.rollback(model, str(tiny.version))
        with pytest.raises(Conflict):  # writes its object, loses the race, removes the object again
            store.commit(model, {"model.norm.weight": sparse(1, 9.0)}, "main", head, CommitInfo())
        assert {sha for sha, _ in store.objects.list()} == store.catalog.referenced_objects()
        orphans = {store.objects.put_bytes(b"left by a killed commit")[0]}

        assert sorted(store.gc()) == sorted(orphans)
        assert {sha for sha, _ in store.objects.list()} == store.catalog.referenced_objects()
        fresh = Deployment(settings).local_store()
        for ref in ("pinned", str(squashed.id), str(head)):
            assert all(torch.equal(fresh.fetch(model, ref)[n], t) for n, t in expected.items())
        assert all(torch.equal(fresh.fetch(model, str(rollback.id))[n], t) for n, t in tiny.tensors.items())
        assert fresh.gc() == []
        fresh.catalog.engine.dispose()
    finally:
        store.catalog.engine.dispose()
