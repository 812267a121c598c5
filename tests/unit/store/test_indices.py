"""Gap-coded sparse indices: every index set round-trips exactly, object files read back what was written
(old int32/int64 files too), and every damaged stream is a Corrupt error, never wrong positions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from llmk.domain import deltas, indices
from llmk.domain.deltas import Delta, Kind
from llmk.errors import Corrupt, InvalidDelta
from services.store.adapters.objects import ObjectStore

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
I64_MAX = 2**63 - 1

# Gaps drawn around the escape values of both widths, and far beyond them.
gaps = st.one_of(
    st.integers(0, 3),
    st.integers(250, 260),
    st.integers(65530, 65540),
    st.integers(0, 2**22),  # a few thousand escapes at most: huge gaps, quick examples
    st.sampled_from([255 * 255, 65535 * 3, 65535 * 64 + 1]),
)
index_sets = st.lists(gaps, max_size=60).map(lambda gs: torch.tensor(gs, dtype=torch.int64).cumsum(0))


@FAST
@given(idx=index_sets, width=st.sampled_from(indices.WIDTHS))
@example(idx=torch.tensor([], dtype=torch.int64), width=torch.uint8)
@example(idx=torch.tensor([0]), width=torch.uint16)
@example(idx=torch.tensor([2**31 - 1]), width=torch.uint8)
@example(idx=torch.tensor([254, 255, 510, 765]), width=torch.uint8)
@example(idx=torch.tensor([65534, 65535, 131070, 131070]), width=torch.uint16)
def test_any_non_decreasing_index_set_round_trips(idx: torch.Tensor, width: torch.dtype) -> None:
    stream = indices.encode(idx, width)
    assert stream.dtype == width
    assert torch.equal(indices.decode(stream, idx.numel(), torch.int64), idx)


@FAST
@given(idx=index_sets.filter(lambda t: t.numel() == 0 or int(t[-1]) < 2**31))
def test_the_smallest_form_is_never_larger_than_int32_and_decodes_exactly(idx: torch.Tensor) -> None:
    flat = idx.to(torch.int32)
    stream = indices.smallest(flat)
    if stream is None:
        return
    assert stream.numel() * stream.element_size() < flat.numel() * 4
    assert torch.equal(indices.decode(stream, flat.numel(), torch.int32), flat)


def test_a_one_percent_change_costs_about_one_byte_per_index() -> None:
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(1_000_000, generator=g)[:10_000].sort().values.to(torch.int32)
    stream = indices.smallest(idx)
    assert stream is not None
    assert stream.numel() * stream.element_size() <= 1.25 * idx.numel()


def test_one_far_jump_costs_a_few_escapes_not_a_wider_code() -> None:
    idx = torch.cat([torch.arange(0, 9000, 3), torch.tensor([5_000_000])]).to(torch.int32)
    stream = indices.smallest(idx)
    assert stream is not None
    assert stream.dtype == torch.uint16
    assert stream.numel() == idx.numel() + 5_000_000 // 65535


def test_decreasing_or_negative_indices_are_not_coded() -> None:
    with pytest.raises(InvalidDelta, match="non-decreasing"):
        indices.encode(torch.tensor([5, 3]), torch.uint8)
    with pytest.raises(InvalidDelta, match="non-negative"):
        indices.encode(torch.tensor([-1, 3]), torch.uint16)


# object files -----------------------------------------------------------------------------------


def objects(tmp_path: Path) -> ObjectStore:
    return ObjectStore(tmp_path / "objects")


def read_all(store: ObjectStore, sha: str) -> dict[str, torch.Tensor]:
    with store.open_tensors(sha) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_a_sparse_pack_reads_back_as_written_and_is_smaller(tmp_path: Path, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    idx = torch.randperm(200_000, generator=g)[:2_000].sort().values.to(dtype)
    pack = {"w/indices": idx, "w/values": torch.randn(2_000).to(torch.bfloat16), "b/tensor": torch.ones(3)}
    store = objects(tmp_path)
    sha, size = store.put_tensors(pack)
    back = read_all(store, sha)
    assert back.keys() == pack.keys()
    for k, t in pack.items():
        assert back[k].dtype == t.dtype
        assert torch.equal(back[k], t)
    raw = len(save(pack))
    assert size <= raw - idx.numel() * (idx.element_size() - 1.25)


def test_files_written_with_flat_indices_read_exactly(tmp_path: Path) -> None:
    """Objects stored before gap coding hold int32/int64 indices and no metadata: no migration."""
    store = objects(tmp_path)
    pack = {
        "w/indices": torch.tensor([9, 2, 2], dtype=torch.int32),
        "w/values": torch.tensor([1.0, 2.0, 3.0]),
    }
    sha, _ = store.put_bytes(save(pack))
    back = read_all(store, sha)
    assert torch.equal(back["w/indices"], pack["w/indices"])
    assert back["w/indices"].dtype == torch.int32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_an_unsorted_addition_with_repeats_applies_to_the_same_bits(tmp_path: Path, dtype) -> None:
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 50, (400,), generator=g, dtype=torch.int64)  # many repeats, any order
    values = (torch.randn(400, generator=g) * 100).to(dtype)
    base = torch.randn(50, generator=g).to(dtype)
    store = objects(tmp_path)
    sha, _ = store.put_tensors({"w/indices": idx, "w/values": values})
    back = read_all(store, sha)
    assert bool((back["w/indices"][1:] >= back["w/indices"][:-1]).all())
    expected = deltas.apply(base.clone(), Delta(Kind.SPARSE, {"indices": idx, "values": values}))
    got = deltas.apply(
        base.clone(), Delta(Kind.SPARSE, {"indices": back["w/indices"], "values": back["w/values"]})
    )
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(got.view(bits), expected.view(bits))


def coded_file(stream: torch.Tensor, meta: object, key: str = "w/indices.gaps") -> bytes:
    return save({key: stream}, metadata={indices.CODED: meta if isinstance(meta, str) else json.dumps(meta)})


DAMAGED = {
    "trailing escape": coded_file(
        torch.tensor([3, 255], dtype=torch.uint8), {"w/indices.gaps": ["w/indices", "int32", 1]}
    ),
    "fewer positions than written": coded_file(
        torch.tensor([3, 4], dtype=torch.uint8), {"w/indices.gaps": ["w/indices", "int32", 3]}
    ),
    "wrong stream dtype": coded_file(
        torch.tensor([3, 4], dtype=torch.int32), {"w/indices.gaps": ["w/indices", "int32", 2]}
    ),
    "past the index dtype": coded_file(
        torch.full((40_000,), 65534, dtype=torch.uint16), {"w/indices.gaps": ["w/indices", "int32", 40_000]}
    ),
    "unknown index dtype": coded_file(
        torch.tensor([1], dtype=torch.uint8), {"w/indices.gaps": ["w/indices", "float32", 1]}
    ),
    "negative count": coded_file(
        torch.tensor([1], dtype=torch.uint8), {"w/indices.gaps": ["w/indices", "int32", -1]}
    ),
    "metadata not JSON": coded_file(torch.tensor([1], dtype=torch.uint8), "{oops"),
    "metadata of another shape": coded_file(
        torch.tensor([1], dtype=torch.uint8), {"w/indices.gaps": "w/indices"}
    ),
    "stream missing": coded_file(
        torch.tensor([1], dtype=torch.uint8), {"w/indices.gaps": ["w/indices", "int32", 1]}, "x"
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_coded_stream_is_corrupt(tmp_path: Path, case: str) -> None:
    store = objects(tmp_path)
    sha, _ = store.put_bytes(DAMAGED[case])
    with pytest.raises(Corrupt, match=sha[:12]):
        read_all(store, sha)


@pytest.mark.parametrize("kind", [Kind.SPARSE, Kind.SPARSE_SET, Kind.ROWS, Kind.ROWS_SET])
@pytest.mark.parametrize("ids", [[3, 16], [-1, 2]])
def test_stored_positions_outside_the_tensor_are_corrupt(kind: Kind, ids: list[int]) -> None:
    part = "indices" if kind in (Kind.SPARSE, Kind.SPARSE_SET) else "rows"
    values = torch.ones(2) if part == "indices" else torch.ones(2, 4)
    delta = Delta(kind, {part: torch.tensor(ids), "values": values})
    with pytest.raises(Corrupt, match="outside"):
        deltas.apply(torch.zeros(4, 4) if part == "indices" else torch.zeros(3, 4), delta)


def test_a_handful_of_indices_stays_flat_where_coding_would_grow_the_file(tmp_path: Path) -> None:
    store = objects(tmp_path)
    pack = {"norm/indices": torch.tensor([3, 70, 400], dtype=torch.int32), "norm/values": torch.ones(3)}
    sha, size = store.put_tensors(pack)
    assert size == len(save(pack))
    assert torch.equal(read_all(store, sha)["norm/indices"], pack["norm/indices"])
