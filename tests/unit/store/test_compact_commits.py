"""Sparse commits through the store: a 1% change to a 16-bit tensor costs at most 2.5% of its dense bytes on
disk, and every reader (materialize, steps, a restarted store's overflow check) sees exactly what was sent."""

from __future__ import annotations

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain import deltas
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from llmk.errors import InvalidDelta
from services.store.usecases.store import Store

W = "w"
SHAPE = (256, 384)


def one_percent(dtype: torch.dtype, seed: int, ascending: bool = True) -> Delta:
    g = torch.Generator().manual_seed(seed)
    numel = SHAPE[0] * SHAPE[1]
    idx = torch.randperm(numel, generator=g)[: numel // 100].to(torch.int32)
    idx = idx.sort().values if ascending else idx
    return Delta(
        Kind.SPARSE, {"indices": idx, "values": (torch.randn(idx.numel(), generator=g) * 1e-2).to(dtype)}
    )


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_one_percent_change_to_a_16_bit_tensor_stores_in_2_5_percent(store: Store, dtype) -> None:
    base = torch.randn(SHAPE).to(dtype)
    store.create_model("m", {W: base}, {}, {}, CommitInfo())
    first = store.resolve("m", "main")
    change = one_percent(dtype, seed=3)
    v = store.commit("m", {W: change})
    stored = store.objects.verify(v.entries[0].object).stat().st_size
    assert stored <= 0.025 * base.numel() * base.element_size()
    expected = deltas.apply(base.clone(), change)
    assert torch.equal(bits(store.fetch("m")[W]), bits(expected))
    steps = store.steps("m", first, v.id)
    assert steps is not None
    back = steps[0].entries[W]
    assert back.parts["indices"].dtype == torch.int32
    assert torch.equal(back.parts["indices"], change.parts["indices"])
    assert torch.equal(bits(back.parts["values"]), bits(change.parts["values"]))


def test_unsorted_additions_with_repeats_materialize_to_the_same_bits(store: Store) -> None:
    base = torch.randn(SHAPE).to(torch.bfloat16)
    store.create_model("m", {W: base}, {}, {}, CommitInfo())
    change = one_percent(torch.bfloat16, seed=4, ascending=False)
    repeats = change.parts["indices"][:50]
    change = Delta(
        Kind.SPARSE,
        {
            "indices": torch.cat([change.parts["indices"], repeats.flip(0)]),
            "values": torch.cat([change.parts["values"], change.parts["values"][:50] * 3]),
        },
    )
    store.commit("m", {W: change})
    assert torch.equal(bits(store.fetch("m")[W]), bits(deltas.apply(base.clone(), change)))


def test_positions_too_far_apart_to_code_are_stored_flat_and_read_back(store: Store) -> None:
    base = torch.randn(SHAPE)
    store.create_model("m", {W: base}, {}, {}, CommitInfo())
    change = Delta(Kind.SPARSE_SET, {"indices": torch.tensor([0, base.numel() - 1]), "values": torch.ones(2)})
    store.commit("m", {W: change})
    got = store.fetch("m")[W].view(-1)
    assert got[0] == 1
    assert got[-1] == 1
    assert torch.equal(got[1:-1], base.view(-1)[1:-1])


def test_a_restarted_store_bounds_coded_entries_soundly(settings: Settings) -> None:
    """A fresh process works out each stored entry's magnitude from the decoded indices: a large stored
    addition still makes the next one that would overflow fp16 go through the exact check and fail."""
    store = Deployment(settings).local_store()
    store.create_model("m", {W: torch.zeros(SHAPE, dtype=torch.float16)}, {}, {}, CommitInfo())
    big = one_percent(torch.float16, seed=5)
    big = Delta(
        Kind.SPARSE, {"indices": big.parts["indices"], "values": torch.full_like(big.parts["values"], 60000)}
    )
    store.commit("m", {W: big})
    restarted = Deployment(settings).local_store()
    with pytest.raises(InvalidDelta, match="overflow"):
        restarted.commit("m", {W: big})
    small = one_percent(torch.float16, seed=6)
    assert restarted.commit("m", {W: small}).parent is not None
