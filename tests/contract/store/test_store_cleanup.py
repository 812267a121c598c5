"""What a refused write leaves behind (nothing), and the snapshot cache that reads fill (bounded; a failed
cache write never fails a read), on every client and backend."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from llmk.domain.versions import CommitInfo
from llmk.errors import Conflict, InvalidInput
from tests.contract.store.contract_support import NORM, UP0, assert_same_tensors, corrupt_in_place, sparse


def object_files(env) -> set[Path]:  # env: conftest.Env
    """Every file under the object folder, temp files included."""
    return {p for p in env.objects.rglob("*") if p.is_file()}


def test_a_losing_racer_leaves_no_object_file(env) -> None:
    v2 = env.client.commit(env.model, {UP0: sparse([0], [1.0])}, "main", env.first)
    files, before = object_files(env), env.history()
    with pytest.raises(Conflict):  # computed against the old head: its object is written, then refused
        env.client.commit(env.model, {NORM: sparse([3], [2.0])}, "main", env.first)
    assert env.history() == before
    assert object_files(env) == files
    assert env.head() == v2.id


def test_a_refused_commit_keeps_an_object_a_committed_version_shares(env) -> None:
    """Content addressing: the refused commit's pack may be a committed version's file; it stays."""
    env.client.branch(env.model, "side", "main")
    same = {UP0: sparse([5], [1.5])}
    side = env.client.commit(env.model, same, "side", env.first)
    env.client.commit(env.model, {NORM: sparse([0], [1.0])}, "main", env.first)
    files = object_files(env)
    with pytest.raises(Conflict):
        env.client.commit(env.model, same, "main", env.first)
    assert object_files(env) == files
    assert env.client.fetch(env.model, str(side.id), names=[UP0])[UP0][0, 5] == env.tensors[UP0][0, 5] + 1.5


LONG_TEXT = {
    "over-long author": CommitInfo(author="a" * 201),
    "over-long idempotency key": CommitInfo(idempotency_key="k" * 201),
    "over-long message": CommitInfo(message="m" * (64 * 1024 + 1)),
    "NUL in the author": CommitInfo(author="bad\x00author"),
    "NUL in the message": CommitInfo(message="bad\x00message"),
}


@pytest.mark.parametrize("info", LONG_TEXT.values(), ids=LONG_TEXT.keys())
def test_commit_text_no_backend_can_store_is_refused_before_anything_is_written(env, info) -> None:
    files, before = object_files(env), env.history()
    with pytest.raises(InvalidInput):
        env.client.commit(env.model, {UP0: sparse([0], [1.0])}, "main", env.first, info)
    if info.author != CommitInfo().author:  # rollback and squash take an author only
        with pytest.raises(InvalidInput):
            env.client.rollback(env.model, str(env.first), author=info.author)
        with pytest.raises(InvalidInput):
            env.client.squash(env.model, author=info.author)
    with pytest.raises(InvalidInput):
        env.client.create_model("other", {"w": torch.ones(2)}, {}, {"config.json": b"{}"}, info)
    assert env.history() == before
    assert object_files(env) == files
    assert [m.name for m in env.client.models()] == [env.model]


def long_chain(env, commits: int) -> tuple[list[int], list[dict[str, torch.Tensor]]]:  # env: conftest.Env
    """Versions after `first`, each one sparse step further, with the values each must read as."""
    heads, values, head = [], [], env.first
    expected = {n: t.clone() for n, t in env.tensors.items()}
    for i in range(commits):
        head = env.client.commit(env.model, {UP0: sparse([i], [0.25])}, "main", head).id
        expected[UP0].view(-1)[i] += 0.25
        heads.append(head)
        values.append({n: t.clone() for n, t in expected.items()})
    return heads, values


def snapshot_bytes(env) -> int:  # env: conftest.Env
    return sum({s.object: s.size for s in env.inspect.catalog.snapshots()}.values())


def test_the_snapshot_cache_stays_within_its_budget_least_recently_used_first(make_env, llama_tiny) -> None:
    budget = int(sum(t.numel() * t.element_size() for t in llama_tiny.tensors.values()) * 2.5)  # 2, not 3
    env = make_env(cache_chain_length=2, snapshot_cache_bytes=budget)
    heads, values = long_chain(env, 5)
    a, b, c = heads[2], heads[3], heads[4]
    for vid in (a, b, a, c):  # a is read again after b: b is the least recently used when c arrives
        assert_same_tensors(env.client.fetch(env.model, str(vid)), values[heads.index(vid)])
    cached = {s.version for s in env.inspect.catalog.snapshots()}
    assert cached == {a, c}
    assert snapshot_bytes(env) <= budget
    on_disk = {sha for sha, _ in env.inspect.objects.list()}
    assert on_disk == env.inspect.catalog.referenced_objects(), "an evicted snapshot's file goes too"
    for vid, expected in zip(heads, values, strict=True):
        assert_same_tensors(env.client.fetch(env.model, str(vid)), expected)
    assert snapshot_bytes(env) <= budget


def test_no_cache_at_all_with_a_zero_budget(make_env) -> None:
    env = make_env(cache_chain_length=2, snapshot_cache_bytes=0)
    _, values = long_chain(env, 3)
    assert_same_tensors(env.client.fetch(env.model), values[-1])
    assert env.inspect.catalog.snapshots() == []


def test_a_failed_cache_write_never_fails_the_read(make_env) -> None:
    env = make_env(cache_chain_length=2)
    heads, values = long_chain(env, 3)
    files = object_files(env)
    temp = env.objects / "tmp"
    shutil.rmtree(temp)
    temp.write_bytes(b"")  # every object write now fails, as on a broken or read-only disk
    try:
        assert_same_tensors(env.client.fetch(env.model), values[-1])
        assert env.inspect.catalog.snapshots() == []
        assert object_files(env) == files | {temp}
    finally:
        temp.unlink()
        temp.mkdir()
    assert_same_tensors(env.client.fetch(env.model), values[-1])
    assert [s.version for s in env.inspect.catalog.snapshots()] == [heads[-1]]


def test_a_damaged_snapshot_is_dropped_and_read_around(make_env) -> None:
    """A snapshot is a cache: the deltas beneath it are the truth and still verified."""
    env = make_env(cache_chain_length=2)
    _, values = long_chain(env, 3)
    env.client.fetch(env.model)
    (snapshot,) = env.inspect.catalog.snapshots()
    corrupt_in_place(env.objects / snapshot.object[:2] / snapshot.object[2:])
    assert_same_tensors(env.client.fetch(env.model), values[-1])
    assert_same_tensors(env.client.fetch(env.model), values[-1])
