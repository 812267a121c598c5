"""A commit proves an additive result finite from bounds, so it does not read the tensors it changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from llmk.errors import InvalidDelta
from services.store.usecases import store as store_module
from services.store.usecases.commit_checks import MAGNITUDES, stored_magnitudes
from services.store.usecases.store import Store

W = "w"


def sparse(values: list[float]) -> dict[str, Delta]:
    return {W: Delta(Kind.SPARSE, {"indices": torch.arange(len(values)), "values": torch.tensor(values)})}


class CountingReads:
    """Counts the tensors a store reads from its object files, around the real object store."""

    def __init__(self, store: Store):
        self.read: list[str] = []
        real = store.objects.open_tensors
        counting = self

        class Handle:
            def __init__(self, sha: str):
                self.file = real(sha)

            def __enter__(self) -> Handle:
                self.file.__enter__()
                return self

            def __exit__(self, *exc: object) -> None:
                self.file.__exit__(*exc)

            def get_tensor(self, key: str) -> torch.Tensor:
                counting.read.append(key)
                return self.file.get_tensor(key)

            def __getattr__(self, name: str):  # keys, get_slice: headers only
                return getattr(self.file, name)

        store.objects.open_tensors = Handle  # type: ignore[method-assign]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def test_a_small_additive_commit_reads_no_stored_tensor(settings: Settings) -> None:
    store = Deployment(settings).local_store()
    store.create_model("m", {W: torch.randn(64, 64)}, {}, {}, CommitInfo())
    store.commit("m", sparse([0.1, 0.2]))
    reads = CountingReads(store)
    store.commit("m", sparse([0.3]))
    assert reads.read == []  # the bounds of what this process wrote are known


def test_a_commit_above_a_snapshot_reads_no_stored_tensor(tmp_path: Path) -> None:
    store = Deployment(Settings(home=tmp_path, cache_chain_length=2)).local_store()
    store.create_model("m", {W: torch.randn(64, 64)}, {}, {}, CommitInfo())
    for step in range(3):
        v = store.commit("m", sparse([0.1 * step]))
    store.fetch("m", str(v.id))  # a long chain: the read caches a snapshot
    assert store.catalog.chain("m", v.id)[1] is not None
    reads = CountingReads(store)
    store.commit("m", sparse([0.3]))
    assert reads.read == []


def test_a_restarted_store_bounds_entries_from_the_object_headers(settings: Settings) -> None:
    """Each object names its entries' magnitude, so a restarted store reads no value to bound a commit (on
    SmolLM2 the first commit after a restart read the whole 538 MB base: 5-6 s)."""
    first = Deployment(settings).local_store()
    first.create_model("m", {W: torch.randn(64, 64)}, {}, {}, CommitInfo())
    first.commit("m", sparse([0.1]))
    again = Deployment(settings).local_store()
    reads = CountingReads(again)
    again.commit("m", sparse([0.2]))
    assert reads.read == []


def test_objects_written_without_reaches_are_read_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects from before magnitudes were stored (here: written without them) are bounded from values."""
    monkeypatch.setattr(store_module, "magnitude_metadata", lambda magnitudes: {})
    first = Deployment(settings).local_store()
    first.create_model("m", {W: torch.randn(64, 64)}, {}, {}, CommitInfo())
    first.commit("m", sparse([0.1]))
    monkeypatch.undo()
    again = Deployment(settings).local_store()
    reads = CountingReads(again)
    again.commit("m", sparse([0.2]))
    assert len(reads.read) == 3  # the full value and the delta's two parts beneath the head, once each
    again.commit("m", sparse([0.3]))
    assert len(reads.read) == 3


def test_an_unreadable_reaches_header_is_ignored() -> None:
    assert stored_magnitudes({MAGNITUDES: "not json"}) == {}
    assert stored_magnitudes({MAGNITUDES: '["w", 1.0]'}) == {}
    assert stored_magnitudes({MAGNITUDES: '{"w": "big", "v": true, "u": 2}'}) == {"u": 2.0}
    assert stored_magnitudes(None) == {}


def test_a_result_near_overflow_is_checked_exactly(settings: Settings) -> None:
    """Bounds only skip the exact check far from overflow: near it, the real result decides."""
    store = Deployment(settings).local_store()
    store.create_model("m", {W: torch.full((4,), 3e38)}, {}, {}, CommitInfo())
    v = store.commit("m", sparse([-3e38, -3e38]))  # bound says maybe; the value (0, 0, 3e38, 3e38) is finite
    assert store.fetch("m", str(v.id))[W].tolist()[:2] == [0.0, 0.0]
    with pytest.raises(InvalidDelta, match="NaN or Inf"):
        store.commit("m", sparse([0.0, 0.0, 3e38]))
