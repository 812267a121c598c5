"""Corruption in place is never served: a byte flipped inside an object file with its mtime set back (as
`touch -r` does) is caught on the next read, and `llmk store scrub` re-hashes every object, quarantines the
damaged ones and exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from llmk.errors import Corrupt
from services.store.adapters.importers import load_source
from services.store.usecases.store import Store
from tests.conftest import make_settings
from tests.contract.store.contract_support import flip_in_place

LLMK = [str(Path(sys.executable).with_name("llmk"))]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Deployment(make_settings(tmp_path / "home")).local_store()
    tiny = load_source("synthetic:llama-tiny")
    s.create_model("tiny", tiny.tensors, tiny.config, tiny.files, CommitInfo())
    s.fetch("tiny", "main")  # verified once: the cache would answer next time
    return s


def test_a_byte_flipped_in_place_with_its_mtime_restored_is_refused(store: Store) -> None:
    [sha] = {e.object for e in store.version("tiny", "main").entries}
    flip_in_place(store.objects.verify(sha))
    with pytest.raises(Corrupt, match="failed its checksum"):
        store.fetch("tiny", "main")


def test_scrub_quarantines_damaged_objects_and_exits_non_zero(store: Store, tmp_path: Path) -> None:
    [sha] = {e.object for e in store.version("tiny", "main").entries}
    assert store.scrub() == []
    flip_in_place(store.objects.verify(sha))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")} | {
        "LLMK_HOME": str(tmp_path / "home")
    }
    done = subprocess.run([*LLMK, "store", "scrub"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 7
    assert done.stderr.strip().startswith("llmk: error: 1 damaged object(s)")
    assert (tmp_path / "home" / "objects" / "quarantine" / sha).exists()
    with pytest.raises(Corrupt, match="missing"):
        store.fetch("tiny", "main")


@pytest.mark.parametrize("operation", ["commit", "freeze", "diff", "rollback"])
def test_a_damaged_cached_snapshot_is_read_around_by_every_operation(tmp_path: Path, operation: str) -> None:
    """A snapshot is a cache: damaged (or quarantined by a scrub), it is dropped and the deltas are read,
    instead of refusing commits, freezes, diffs and rollbacks until some full read drops it."""
    s = Deployment(make_settings(tmp_path / "home", cache_chain_length=1)).local_store()
    first = s.create_model("m", {"w": torch.zeros(4), "n": torch.zeros(4)}, {}, {}, CommitInfo())
    s.commit("m", {"w": Delta(Kind.DENSE, {"diff": torch.ones(4)})})
    s.fetch("m")  # caches main's values
    [snapshot] = s.catalog.snapshots()
    flip_in_place(s.objects.path(snapshot.object))
    one = Delta(Kind.DENSE, {"diff": torch.ones(4)})
    if operation == "commit":
        s.commit("m", {"n": one})
        assert torch.equal(s.fetch("m")["n"], torch.ones(4))
    elif operation == "freeze":
        assert s.freeze("m", ["n"]).frozen == ["n"]
    elif operation == "diff":
        assert [c.name for c in s.diff("m", str(first.id), "main")] == ["w"]
    else:
        s.freeze("m", ["n"])  # a rollback then compares the frozen values of both versions
        s.rollback("m", str(first.id))
        assert torch.equal(s.fetch("m")["w"], torch.zeros(4))
    assert s.catalog.snapshots() == [] or snapshot.object not in {x.object for x in s.catalog.snapshots()}
    s.catalog.engine.dispose()


def test_an_object_this_process_wrote_is_read_without_hashing_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer hashed the bytes to name the file; hashing them again on the first read (a commit's
    own announcement, the worker's steps) only added latency. A later change is still caught."""
    from services.store.adapters import objects

    s = Deployment(make_settings(tmp_path / "home")).local_store()
    sha, _ = s.objects.put_tensors({"w": torch.arange(1000.0)})
    hashed: list[Path] = []
    real = objects.sha256_file
    monkeypatch.setattr(objects, "sha256_file", lambda p: hashed.append(p) or real(p))
    with s.objects.open_tensors(sha) as f:
        assert torch.equal(f.get_tensor("w"), torch.arange(1000.0))
    assert hashed == []
    flip_in_place(s.objects.path(sha))
    with pytest.raises(Corrupt, match="failed its checksum"):
        s.objects.open_tensors(sha)
