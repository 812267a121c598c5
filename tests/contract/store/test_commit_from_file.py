"""`commit --from FILE`: a user-supplied safetensors file is read with a clear error for every kind of
damage (services.store.adapters.objects.read_safetensors), and a good one commits through either client."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmk.domain.deltas import Delta, Kind
from llmk.errors import InvalidDelta, InvalidInput, NotFound
from services.store.adapters.objects import read_safetensors
from tests.contract.store.contract_support import (
    DOWN1,
    EMBED,
    K1,
    NORM,
    Q0,
    UP0,
    assert_same_tensors,
    rows,
    same_bits,
    sparse,
)

F32x4 = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}


def file_with_header(header: bytes | dict | list, data: bytes = b"", claimed: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if claimed is None else claimed) + raw + data


BAD_FILES = {
    "shorter than the length field": b"\x01\x02\x03",
    "empty": b"",
    "header larger than the limit": file_with_header({}, claimed=1 << 40),
    "header longer than the file": file_with_header({}, claimed=100),
    "header not json": file_with_header(b"{nope"),
    "header not utf-8": file_with_header(b"\xff\xfe\xfd"),
    "header a json list": file_with_header([1, 2]),
    "header a json string": file_with_header(b'"w"'),
    "tensor outside the file (truncated)": file_with_header({"w": F32x4}, bytes(8)),
    "offsets missing": file_with_header({"w": {"dtype": "F32", "shape": [4]}}, bytes(16)),
    "offsets not numbers": file_with_header({"w": {**F32x4, "data_offsets": ["0", "16"]}}, bytes(16)),
    "offsets reversed": file_with_header({"w": {**F32x4, "data_offsets": [16, 0]}}, bytes(16)),
    "tensor entry not an object": file_with_header({"w": 5}, bytes(16)),
    "unknown dtype": file_with_header({"w": {**F32x4, "dtype": "Q3"}}, bytes(16)),
    "shape disagrees with offsets": file_with_header({"w": {**F32x4, "shape": [5]}}, bytes(16)),
    "overlapping tensors": file_with_header({"a": F32x4, "b": {**F32x4, "data_offsets": [8, 24]}}, bytes(24)),
    "deeply nested metadata": file_with_header(b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "metadata values not strings": file_with_header({"__metadata__": {"a": 1}, "w": F32x4}, bytes(16)),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_damaged_file_is_invalid_input(tmp_path: Path, case: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(BAD_FILES[case])
    with pytest.raises(InvalidInput):
        read_safetensors(path, max_header_bytes=1 << 20)


def test_a_header_over_the_configured_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    save_file({f"tensor.{i}": torch.ones(1) for i in range(20)}, str(path))
    assert len(read_safetensors(path, max_header_bytes=1 << 20)) == 20
    with pytest.raises(InvalidInput, match="exceeds"):
        read_safetensors(path, max_header_bytes=100)


def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_safetensors(tmp_path / "nope.safetensors", 1 << 20)


def test_commit_from_a_modified_export(env, tmp_path: Path) -> None:
    exported = tmp_path / "export.safetensors"
    env.client.export(env.model, None, exported)
    tensors = load_file(str(exported))
    tensors[UP0][5, :3] = torch.tensor([1.0, 2.0, 3.0])
    tensors[EMBED][100] = 0.5
    modified = tmp_path / "modified.safetensors"
    save_file(tensors, str(modified))

    before = env.history()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(modified.read_bytes()[:-100])
    with pytest.raises(InvalidInput):
        read_safetensors(damaged, env.settings.max_header_bytes)
    assert env.history() == before

    v = env.client.commit_full(env.model, read_safetensors(modified, env.settings.max_header_bytes))
    assert {e.name: e.kind for e in v.entries} == {UP0: "sparse_set", EMBED: "rows_set"}
    assert_same_tensors(env.client.fetch(env.model), tensors)
    assert env.client.fetch(env.model, str(env.first), names=[NORM])[NORM].sum() == 64


def test_a_sparse_change_to_every_tensor_commits_as_sparse_entries_bit_for_bit(env, tmp_path: Path) -> None:
    """What `llmk store commit MODEL --from FILE` does with 1% of every tensor changed: the version equals
    the file bit for bit, and each change is stored as its positions and values, not a copy."""
    tensors = {n: t.clone() for n, t in env.client.fetch(env.model).items()}
    g = torch.Generator().manual_seed(7)
    for t in tensors.values():
        flat = t.view(-1)
        at = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 100)]
        flat[at] = torch.randn(at.numel(), generator=g)
    new = tmp_path / "new.safetensors"
    save_file(tensors, str(new))

    v = env.client.commit_full(env.model, read_safetensors(new, env.settings.max_header_bytes))
    assert {e.name for e in v.entries} == set(tensors)
    assert {e.kind for e in v.entries} == {"sparse_set"}
    exported = tmp_path / "exported.safetensors"
    env.client.export(env.model, str(v.id), exported)
    assert_same_tensors(load_file(str(exported)), load_file(str(new)))


def changed_at(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Flat positions whose bits differ, ascending."""
    return (old.reshape(-1).view(torch.int32) != new.reshape(-1).view(torch.int32)).nonzero().view(-1)


def test_a_file_commit_on_a_chain_stores_exactly_the_changed_positions(env, tmp_path: Path) -> None:
    """Above every kind of delta (repeated positions in additive ones included), a file with 1% of each
    tensor changed commits as sparse entries naming exactly the positions whose bits differ from the
    parent, with the file's values; the version equals the file."""
    g = torch.Generator().manual_seed(11)
    chain = [
        {UP0: sparse([5, 3, 5, 100], [0.1, 0.2, 0.3, 0.4]), EMBED: rows([7, 7, 9], torch.ones(3, 64))},
        {
            UP0: sparse([3, 64], [1.5, -2.0], Kind.SPARSE_SET),
            DOWN1: rows([2], torch.zeros(1, 128), Kind.ROWS_SET),
        },
        {Q0: Delta(Kind.DENSE, {"diff": torch.randn(64, 64, generator=g)}), NORM: sparse([0, 0], [1.0, 1.0])},
        {
            K1: Delta(
                Kind.LOW_RANK, {"a": torch.randn(32, 2, generator=g), "b": torch.randn(2, 64, generator=g)}
            )
        },
    ]
    for entries in chain:
        parent = env.client.commit(env.model, entries).id
    stored = env.client.fetch(env.model, str(parent))
    new = {n: t.clone() for n, t in stored.items()}
    for t in new.values():
        flat = t.view(-1)
        at = torch.randperm(flat.numel(), generator=g)[: max(2, flat.numel() // 100)]
        flat[at[1:]] += 0.25
        flat[at[0]] = flat[at[0]].clone()  # written, but the same bits: no change
    new[UP0].view(-1)[[3, 5, 64, 100]] += 1.0  # positions the chain touched change too
    path = tmp_path / "new.safetensors"
    save_file(new, str(path))

    v = env.client.commit_full(env.model, read_safetensors(path, env.settings.max_header_bytes))
    steps = env.client.steps(env.model, parent, v.id)
    assert steps is not None
    assert len(steps) == 1
    entries = steps[0].entries
    assert sorted(entries) == sorted(new)
    for name, d in entries.items():
        want = changed_at(stored[name], new[name])
        assert d.kind is Kind.SPARSE_SET, name
        assert torch.equal(d.parts["indices"].long(), want), name
        assert same_bits(d.parts["values"], new[name].reshape(-1)[want]), name
    assert_same_tensors(env.client.fetch(env.model, str(v.id)), new)


def test_an_unchanged_file_says_nothing_changed_and_writes_nothing(env, tmp_path: Path) -> None:
    env.client.commit(env.model, {UP0: sparse([1, 1], [0.5, 0.5]), EMBED: rows([3], torch.ones(1, 64))})
    path = tmp_path / "same.safetensors"
    env.client.export(env.model, None, path)
    before, files = env.history(), sorted(p.name for p in env.objects.rglob("*") if p.is_file())
    with pytest.raises(InvalidInput, match=f"nothing changed against {env.model}@{env.head()}"):
        env.client.commit_full(env.model, read_safetensors(path, env.settings.max_header_bytes))
    assert env.history() == before
    assert sorted(p.name for p in env.objects.rglob("*") if p.is_file()) == files


@pytest.mark.parametrize(
    "change",
    ["a shape", "a dtype"],
)
def test_a_file_that_changes_a_shape_or_dtype_is_refused_in_one_line(
    env, tmp_path: Path, change: str
) -> None:
    tensors = {n: t.clone() for n, t in env.client.fetch(env.model).items()}
    tensors[NORM] = torch.ones(65) if change == "a shape" else tensors[NORM].double()
    tensors[UP0][0, 0] += 1  # a change that would otherwise commit
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    before = env.history()
    with pytest.raises(InvalidDelta, match=f"^{NORM}: .* does not match stored") as e:
        env.client.commit_full(env.model, read_safetensors(path, env.settings.max_header_bytes))
    assert "\n" not in str(e.value)
    assert env.history() == before
