"""The calls a worker following a branch makes: the head's id, the names changed between two versions, and
the typed entries from the version it serves to the new one, which rebuild the new values exactly."""

from __future__ import annotations

import pytest
import torch

from llmk.domain import deltas
from llmk.domain.deltas import Delta, Kind
from llmk.errors import NotFound
from tests.contract.store.contract_support import (
    EMBED,
    NORM,
    Q0,
    UP0,
    assert_same_tensors,
    rows,
    same_bits,
    sparse,
)


def _commit_three(env) -> tuple[int, int, int]:
    """Three versions on main after the import: sparse, rows + low-rank, then a sparse_set."""
    g = torch.Generator().manual_seed(3)
    v2 = env.client.commit(env.model, {UP0: sparse([1, 7], [0.5, -0.25])}).id
    lr = Delta(Kind.LOW_RANK, {"a": torch.randn(64, 2, generator=g), "b": torch.randn(2, 64, generator=g)})
    v3 = env.client.commit(env.model, {EMBED: rows([3, 9], torch.randn(2, 64, generator=g)), Q0: lr}).id
    v4 = env.client.commit(env.model, {UP0: sparse([2], [1.5], Kind.SPARSE_SET)}).id
    return v2, v3, v4


def test_head_is_the_branch_id(env) -> None:
    assert env.client.head(env.model) == env.first
    v2, _, v4 = _commit_three(env)
    assert env.client.head(env.model, "main") == v4
    env.client.branch(env.model, "exp", str(v2))
    assert env.client.head(env.model, "exp") == v2
    with pytest.raises(NotFound):
        env.client.head(env.model, "nope")
    env.client.tag(env.model, "t1", "main")
    with pytest.raises(NotFound, match="no branch"):
        env.client.head(env.model, "t1")


def test_steps_rebuild_the_new_values_exactly(env) -> None:
    v2, v3, v4 = _commit_three(env)
    steps = env.client.steps(env.model, v2, v4)
    assert steps is not None
    assert [s.version for s in steps] == [v3, v4]
    assert {n: d.kind for n, d in steps[0].entries.items()} == {EMBED: Kind.ROWS, Q0: Kind.LOW_RANK}
    served = env.client.fetch(env.model, str(v2))
    for step in steps:
        for name, delta in step.entries.items():
            served[name] = deltas.apply(served[name], delta)
    assert_same_tensors(served, env.client.fetch(env.model, str(v4)))
    assert env.client.steps(env.model, v4, v4) == []


def test_steps_are_none_across_a_rollback_and_changed_names_cover_it(env) -> None:
    v2, v3, v4 = _commit_three(env)
    back = env.client.rollback(env.model, str(v2)).id
    assert env.client.steps(env.model, v4, back) is None
    assert env.client.steps(env.model, v4, v2) is None  # backwards is not a chain either
    assert env.client.changed(env.model, v4, back) == sorted([EMBED, Q0, UP0])
    assert env.client.changed(env.model, v2, back) == []
    assert env.client.changed(env.model, v2, v3) == sorted([EMBED, Q0])
    after, now = env.client.fetch(env.model, str(back)), env.client.fetch(env.model, str(v4))
    unchanged = [n for n in now if n not in env.client.changed(env.model, v4, back)]
    assert NORM in unchanged
    assert all(same_bits(after[n], now[n]) for n in unchanged)


def test_unknown_versions_are_not_found(env) -> None:
    with pytest.raises(NotFound):
        env.client.steps(env.model, env.first, 10**9)
    with pytest.raises(NotFound):
        env.client.steps(env.model, 10**9, env.first)
    with pytest.raises(NotFound):
        env.client.changed(env.model, env.first, 10**9)
