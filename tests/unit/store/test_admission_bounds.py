"""A commit proves an additive result finite from bounds, so it does not read the tensors it changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmk.app.store import CommitInfo, Store
from llmk.config import Settings
from llmk.domain.deltas import Delta, Kind
from llmk.errors import InvalidDelta
from llmk.wiring import open_store

W = "w"


def sparse(values: list[float]) -> dict[str, Delta]:
    return {W: Delta(Kind.SPARSE, {"indices": torch.arange(len(values)), "values": torch.tensor(values)})}


class CountingReads:
    """Counts the object files a store opens, around the real object store."""

    def __init__(self, store: Store):
        self.opened: list[str] = []
        real = store.objects.open_tensors

        def open_tensors(sha: str):  # noqa: ANN202
            self.opened.append(sha)
            return real(sha)

        store.objects.open_tensors = open_tensors  # type: ignore[method-assign]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path)


def test_a_small_additive_commit_reads_no_stored_tensor(settings: Settings) -> None:
    store = open_store(settings)
    store.create_model("m", {W: torch.randn(64, 64)}, {}, {}, CommitInfo())
    store.commit("m", sparse([0.1, 0.2]))
    reads = CountingReads(store)
    store.commit("m", sparse([0.3]))
    assert reads.opened == []  # the bounds of what this process wrote are known


def test_a_restarted_store_reads_each_entry_once(settings: Settings) -> None:
    first = open_store(settings)
    first.create_model("m", {W: torch.randn(64, 64)}, {}, {}, CommitInfo())
    first.commit("m", sparse([0.1]))
    again = open_store(settings)
    reads = CountingReads(again)
    again.commit("m", sparse([0.2]))
    assert len(reads.opened) == 2  # the full value and the delta beneath the head, once each
    again.commit("m", sparse([0.3]))
    assert len(reads.opened) == 2


def test_a_result_near_overflow_is_checked_exactly(settings: Settings) -> None:
    """Bounds only skip the exact check far from overflow: near it, the real result decides."""
    store = open_store(settings)
    store.create_model("m", {W: torch.full((4,), 3e38)}, {}, {}, CommitInfo())
    v = store.commit("m", sparse([-3e38, -3e38]))  # bound says maybe; the value (0, 0, 3e38, 3e38) is finite
    assert store.materialize("m", str(v.id))[W].tolist()[:2] == [0.0, 0.0]
    with pytest.raises(InvalidDelta, match="NaN or Inf"):
        store.commit("m", sparse([0.0, 0.0, 3e38]))
