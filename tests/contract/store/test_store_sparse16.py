"""Sparse changes to 16-bit tensors, stored gap-coded, read back exactly through every client: in process,
streamed over gRPC, and read from the object files by a client beside the store."""

from __future__ import annotations

import pytest
import torch

from llmk.domain import deltas
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from tests.contract.store.contract_support import same_bits

SHAPE = (96, 160)


def change(dtype: torch.dtype, seed: int, kind: Kind) -> Delta:
    g = torch.Generator().manual_seed(seed)
    numel = SHAPE[0] * SHAPE[1]
    idx = torch.randperm(numel, generator=g)[: numel // 100]  # int64, in no order
    if kind is Kind.SPARSE:
        idx = torch.cat([idx, idx[:7]])  # repeats add up
    return Delta(kind, {"indices": idx, "values": torch.randn(idx.numel(), generator=g).to(dtype)})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sparse_16_bit_changes_read_back_exactly_on_every_transport(make_env, dtype) -> None:
    env = make_env(import_tiny=False)
    base = torch.randn(SHAPE).to(dtype)
    first = env.client.create_model("m16", {"w": base}, {}, {}, CommitInfo()).id
    expected, last = base.clone(), first
    for seed, kind in enumerate([Kind.SPARSE, Kind.SPARSE_SET, Kind.SPARSE]):
        d = change(dtype, seed, kind)
        last = env.client.commit("m16", {"w": d}).id
        expected = deltas.apply(expected, d)
    assert same_bits(env.client.fetch("m16")["w"], expected)
    steps = env.client.steps("m16", first, last)
    assert steps is not None
    assert len(steps) == 3
    replayed = base.clone()
    for step in steps:
        entry = step.entries["w"]
        assert entry.parts["indices"].dtype == torch.int64
        assert bool((entry.parts["indices"][1:] >= entry.parts["indices"][:-1]).all())
        replayed = deltas.apply(replayed, entry)
    assert same_bits(replayed, expected)
