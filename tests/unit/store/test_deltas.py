"""Delta algebra against a dense reference, exact encodings bit for bit, and delta validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmk.domain import deltas
from llmk.domain.deltas import Delta, Kind
from llmk.errors import InvalidDelta

FLOATS = [torch.float32, torch.bfloat16, torch.float16]
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(1, 7), min_size=0, max_size=3).map(tuple)
matrix_shapes = st.tuples(st.integers(1, 9), st.integers(1, 9))
seeds = st.integers(0, 2**31 - 1)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(BITS[t.dtype])


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    assert torch.equal(bits(a), bits(b)), "tensors differ in at least one bit"


def random_values(shape: tuple[int, ...], dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=g).to(dtype)


def random_bits(shape: tuple[int, ...], dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Any bit pattern at all: NaNs with payloads, infinities, -0.0, subnormals."""
    view = BITS[dtype]
    info = torch.iinfo(view)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(view).view(dtype)


def pick(numel: int, frac: float, g: torch.Generator) -> torch.Tensor:
    k = max(1, round(numel * frac))
    return torch.randperm(numel, generator=g)[:k]


# apply == dense reference ------------------------------------------------------------------------


def sparse_case(base: torch.Tensor, g: torch.Generator, frac: float, setting: bool):
    idx = pick(base.numel(), frac, g)
    values = random_values((idx.numel(),), base.dtype, g)
    dense = base.clone().view(-1)
    if setting:
        dense[idx] = values
        return Delta(Kind.SPARSE_SET, {"indices": idx.int(), "values": values}), dense.view(base.shape)
    diff = torch.zeros_like(dense)
    diff[idx] = values
    return Delta(Kind.SPARSE, {"indices": idx, "values": values}), base + diff.view(base.shape)


def rows_case(base: torch.Tensor, g: torch.Generator, frac: float, setting: bool):
    rows = pick(base.shape[0], frac, g)
    values = random_values((rows.numel(), *base.shape[1:]), base.dtype, g)
    if setting:
        ref = base.clone()
        ref[rows] = values
        return Delta(Kind.ROWS_SET, {"rows": rows.int(), "values": values}), ref
    diff = torch.zeros_like(base)
    diff[rows] = values
    return Delta(Kind.ROWS, {"rows": rows, "values": values}), base + diff


@FAST
@given(
    dtype=st.sampled_from(FLOATS),
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple),
    seed=seeds,
    frac=st.floats(0.0, 1.0),
    kind=st.sampled_from([Kind.SPARSE, Kind.SPARSE_SET, Kind.ROWS, Kind.ROWS_SET, Kind.DENSE]),
)
def test_apply_equals_dense_computation(dtype, shape, seed, frac, kind) -> None:
    g = torch.Generator().manual_seed(seed)
    base = random_values(shape, dtype, g)
    if kind in (Kind.SPARSE, Kind.SPARSE_SET):
        delta, ref = sparse_case(base, g, frac, kind is Kind.SPARSE_SET)
    elif kind in (Kind.ROWS, Kind.ROWS_SET):
        delta, ref = rows_case(base, g, frac, kind is Kind.ROWS_SET)
    else:
        diff = random_values(shape, dtype, g)
        delta, ref = Delta(Kind.DENSE, {"diff": diff}), base + diff
    deltas.validate("w", delta, shape, dtype)
    out = deltas.apply(base.clone(), delta)
    assert out.dtype == dtype
    assert out.shape == shape
    assert torch.equal(out, ref)


@FAST
@given(dtype=st.sampled_from(FLOATS), shape=matrix_shapes, rank=st.integers(1, 4), seed=seeds)
def test_low_rank_equals_dense_product(dtype, shape, rank, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    base = random_values(shape, dtype, g)
    a, b = random_values((shape[0], rank), dtype, g), random_values((rank, shape[1]), dtype, g)
    delta = Delta(Kind.LOW_RANK, {"a": a, "b": b})
    deltas.validate("w", delta, shape, dtype)
    out = deltas.apply(base.clone(), delta)
    # the dense computation: the float32 product, rounded once to the tensor's dtype, added
    assert torch.equal(out, base + (a.float() @ b.float()).to(dtype))
    exact = base.double() + a.double() @ b.double()
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    assert torch.allclose(out.double(), exact, rtol=tolerance, atol=tolerance * 4)


def test_full_replaces_and_nnz_counts_what_can_change() -> None:
    t = torch.arange(12.0).view(3, 4)
    assert deltas.apply(None, deltas.full(t)) is t
    assert deltas.full(t).nnz == 12
    sparse = Delta(Kind.SPARSE, {"indices": torch.tensor([1, 5]), "values": torch.ones(2)})
    rows = Delta(Kind.ROWS, {"rows": torch.tensor([2]), "values": torch.ones(1, 4)})
    low = Delta(Kind.LOW_RANK, {"a": torch.ones(3, 1), "b": torch.ones(1, 4)})
    assert (sparse.nnz, rows.nnz, low.nnz) == (2, 4, 12)
    assert sparse.nbytes == 2 * 8 + 2 * 4


# encode_exact: bit for bit ----------------------------------------------------------------------

SPECIALS = {
    # (old bits, new bits): a change no float comparison sees
    torch.float32: [(0x00000000, -0x80000000), (0x7FC00000, 0x7FC00001), (0x7F800001, 0x7FC00000)],
    torch.bfloat16: [(0x0000, -0x8000), (0x7FC0, 0x7FC1), (0x7F81, 0x7FC0)],
    torch.float16: [(0x0000, -0x8000), (0x7E00, 0x7E01), (0x7C01, 0x7E00)],
}


def with_bits(t: torch.Tensor, positions: torch.Tensor, value: int) -> torch.Tensor:
    out = t.clone()
    bits(out).view(-1)[positions] = value
    return out


@FAST
@given(
    dtype=st.sampled_from(FLOATS),
    shape=shapes,
    seed=seeds,
    frac=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
    special=st.integers(-1, 2),
)
@example(dtype=torch.float32, shape=(4, 4), seed=0, frac=0.0, special=0)
@example(dtype=torch.bfloat16, shape=(3,), seed=1, frac=0.0, special=1)
@example(dtype=torch.float16, shape=(2, 2, 2), seed=2, frac=0.0, special=2)
def test_encode_exact_rebuilds_new_bit_for_bit(dtype, shape, seed, frac, special) -> None:
    g = torch.Generator().manual_seed(seed)
    old = random_bits(shape, dtype, g)
    numel = math.prod(shape)
    new = old.clone()
    if frac:
        positions = pick(numel, frac, g)
        bits(new).view(-1)[positions] = bits(random_bits((positions.numel(),), dtype, g))
    if special >= 0:
        before, after = SPECIALS[dtype][special]
        spot = torch.randint(0, numel, (1,), generator=g)
        old, new = with_bits(old, spot, before), with_bits(new, spot, after)
    delta = deltas.encode_exact(old, new)
    if torch.equal(bits(old), bits(new)):
        assert delta is None
        return
    assert delta is not None
    assert_bits_equal(deltas.apply(old.clone(), delta), new)
    assert delta.nbytes == cheapest_exact_bytes(old, new)


def cheapest_exact_bytes(old: torch.Tensor, new: torch.Tensor) -> int:
    """The smallest of full copy, changed values with int32 indices, changed rows with int32 ids."""
    size = new.element_size()
    changed = bits(old) != bits(new)
    options = [new.numel() * size, int(changed.sum()) * (4 + size)]
    if new.dim() >= 2:
        rows = int(changed.view(new.shape[0], -1).any(dim=1).sum())
        options.append(rows * 4 + rows * (new.numel() // new.shape[0]) * size)
    return min(options)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", [0, 1, 2])
def test_sign_of_zero_and_nan_payload_changes_are_kept(dtype, case) -> None:
    before, after = SPECIALS[dtype][case]
    old = with_bits(torch.ones(4, 3, dtype=dtype), torch.tensor([5]), before)
    new = with_bits(old, torch.tensor([5]), after)
    delta = deltas.encode_exact(old, new)
    assert delta is not None
    assert delta.kind is Kind.SPARSE_SET
    assert delta.nnz == 1
    assert_bits_equal(deltas.apply(old.clone(), delta), new)


def test_encode_exact_of_a_new_or_reshaped_tensor_is_full() -> None:
    new = torch.randn(3, 2)
    assert deltas.encode_exact(None, new).kind is Kind.FULL
    assert deltas.encode_exact(torch.randn(2, 3), new).kind is Kind.FULL
    assert deltas.encode_exact(new.double(), new).kind is Kind.FULL


def test_whole_rows_are_stored_as_rows() -> None:
    old = torch.randn(64, 32)
    new = old.clone()
    new[7] += 1.0
    delta = deltas.encode_exact(old, new)
    assert delta.kind is Kind.ROWS_SET
    assert delta.parts["rows"].tolist() == [7]
    assert_bits_equal(deltas.apply(old.clone(), delta), new)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(100, 300), cols=st.integers(1, 48), seed=seeds)
def test_one_percent_change_costs_at_most_two_and_a_half_percent(rows, cols, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(rows, cols, generator=g)
    new = old.clone()
    changed = torch.randperm(old.numel(), generator=g)[: old.numel() // 100]
    new.view(-1)[changed] += 1.0
    delta = deltas.encode_exact(old, new)
    assert delta is not None
    assert delta.nbytes <= 0.025 * old.numel() * old.element_size()
    assert_bits_equal(deltas.apply(old.clone(), delta), new)


# validation --------------------------------------------------------------------------------------

F32, SHAPE = torch.float32, (4, 3)
IDX = torch.tensor([0, 1])


def nan_values(dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([1.0, float("nan")], dtype=dtype)


BAD = {
    "dense shape mismatch": (Delta(Kind.DENSE, {"diff": torch.zeros(3, 4)}), "shape mismatch"),
    "dense dtype mismatch": (Delta(Kind.DENSE, {"diff": torch.zeros(SHAPE, dtype=torch.float16)}), "dtype"),
    "sparse dtype mismatch": (
        Delta(Kind.SPARSE, {"indices": IDX, "values": torch.ones(2, dtype=torch.bfloat16)}),
        "dtype",
    ),
    "sparse index past the end": (
        Delta(Kind.SPARSE, {"indices": torch.tensor([0, 12]), "values": torch.ones(2)}),
        "out of range",
    ),
    "sparse negative index": (
        Delta(Kind.SPARSE_SET, {"indices": torch.tensor([-1]), "values": torch.ones(1)}),
        "out of range",
    ),
    "sparse float indices": (Delta(Kind.SPARSE, {"indices": IDX.float(), "values": torch.ones(2)}), "int"),
    "sparse 2-D indices": (
        Delta(Kind.SPARSE, {"indices": IDX.view(1, 2), "values": torch.ones(1, 2)}),
        "1-D",
    ),
    "sparse count mismatch": (Delta(Kind.SPARSE, {"indices": IDX, "values": torch.ones(3)}), "values"),
    "row past the end": (Delta(Kind.ROWS, {"rows": torch.tensor([4]), "values": torch.ones(1, 3)}), "range"),
    "rows values shape": (Delta(Kind.ROWS_SET, {"rows": IDX, "values": torch.ones(2, 4)}), "does not fit"),
    "low-rank wrong shape": (
        Delta(Kind.LOW_RANK, {"a": torch.ones(3, 1), "b": torch.ones(1, 3)}),
        "does not give",
    ),
    "low-rank rank mismatch": (
        Delta(Kind.LOW_RANK, {"a": torch.ones(4, 2), "b": torch.ones(1, 3)}),
        "rank",
    ),
    "low-rank dtype": (
        Delta(Kind.LOW_RANK, {"a": torch.ones(4, 1), "b": torch.ones(1, 3, dtype=torch.float16)}),
        "dtype",
    ),
    "missing part": (Delta(Kind.SPARSE, {"indices": IDX}), "lacks part"),
    "inf in dense": (Delta(Kind.DENSE, {"diff": torch.full(SHAPE, float("inf"))}), "NaN or Inf"),
    "-inf in low-rank": (
        Delta(Kind.LOW_RANK, {"a": torch.full((4, 1), -float("inf")), "b": torch.ones(1, 3)}),
        "NaN or Inf",
    ),
    "nan in full": (Delta(Kind.FULL, {"tensor": torch.full(SHAPE, float("nan"))}), "NaN or Inf"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_delta_is_rejected(case: str) -> None:
    delta, message = BAD[case]
    with pytest.raises(InvalidDelta, match=message):
        deltas.validate("model.w", delta, SHAPE, F32)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", [Kind.SPARSE, Kind.SPARSE_SET])
def test_nan_in_values_is_rejected_for_every_float_dtype(dtype, kind) -> None:
    delta = Delta(kind, {"indices": IDX, "values": nan_values(dtype)})
    with pytest.raises(InvalidDelta, match="NaN or Inf"):
        deltas.validate("model.w", delta, SHAPE, dtype)


def test_a_delta_needs_an_existing_tensor() -> None:
    delta = Delta(Kind.SPARSE, {"indices": IDX, "values": torch.ones(2)})
    with pytest.raises(InvalidDelta, match="existing tensor"):
        deltas.validate("model.new", delta, None, None)
    deltas.validate("model.new", deltas.full(torch.ones(2)), None, None)


def test_unknown_kind_is_an_invalid_delta() -> None:
    assert deltas.parse_kind("rows_set") is Kind.ROWS_SET
    with pytest.raises(InvalidDelta, match="unknown delta kind"):
        deltas.parse_kind("quantized")


def test_valid_deltas_pass() -> None:
    for delta in (
        Delta(Kind.SPARSE, {"indices": torch.tensor([0, 11], dtype=torch.int32), "values": torch.ones(2)}),
        Delta(Kind.ROWS, {"rows": torch.tensor([3]), "values": torch.ones(1, 3)}),
        Delta(Kind.LOW_RANK, {"a": torch.ones(4, 2), "b": torch.ones(2, 3)}),
        Delta(Kind.DENSE, {"diff": torch.zeros(SHAPE)}),
    ):
        deltas.validate("model.w", delta, SHAPE, F32)


@pytest.mark.parametrize("kind", [Kind.SPARSE_SET, Kind.ROWS_SET])
def test_a_replacement_naming_one_position_twice_is_rejected(kind: Kind) -> None:
    key = "indices" if kind is Kind.SPARSE_SET else "rows"
    values = torch.ones(2) if kind is Kind.SPARSE_SET else torch.ones(2, 3)
    d = Delta(kind, {key: torch.tensor([1, 1]), "values": values})
    with pytest.raises(InvalidDelta, match="twice"):
        deltas.validate("w", d, (4, 3), torch.float32)


# bounds: what lets a commit prove its result finite without reading the stored tensor -----------------


def any_delta(kind: Kind, shape: tuple[int, int], dtype: torch.dtype, g: torch.Generator) -> Delta:
    """A delta of `kind`, with repeated and unordered positions where the kind allows them."""
    n, scale = 1 + int(torch.randint(0, 12, (1,), generator=g)), 10.0 ** int(torch.randint(-3, 3, (1,)))
    if kind in (Kind.SPARSE, Kind.SPARSE_SET):
        numel = shape[0] * shape[1]
        idx = (
            pick(numel, 1.0, g)[:n] if kind is Kind.SPARSE_SET else torch.randint(0, numel, (n,), generator=g)
        )
        return Delta(kind, {"indices": idx, "values": random_values((idx.numel(),), dtype, g) * scale})
    if kind in (Kind.ROWS, Kind.ROWS_SET):
        rows = (
            pick(shape[0], 1.0, g)[:n]
            if kind is Kind.ROWS_SET
            else torch.randint(0, shape[0], (n,), generator=g)
        )
        return Delta(
            kind, {"rows": rows, "values": random_values((rows.numel(), shape[1]), dtype, g) * scale}
        )
    if kind is Kind.LOW_RANK:
        rank = 1 + n % 4
        a, b = random_values((shape[0], rank), dtype, g), random_values((rank, shape[1]), dtype, g)
        return Delta(kind, {"a": a * scale, "b": b})
    if kind is Kind.DENSE:
        return Delta(kind, {"diff": random_values(shape, dtype, g) * scale})
    return deltas.full(random_values(shape, dtype, g) * scale)


@FAST
@given(dtype=st.sampled_from(FLOATS), shape=matrix_shapes, seed=seeds, steps=st.integers(1, 6))
def test_a_bound_carried_through_entries_holds_every_stored_value(dtype, shape, seed, steps) -> None:
    """bound_after(magnitude) never underestimates |value|, whatever mix of entries, repeats and order."""
    g = torch.Generator().manual_seed(seed)
    value = random_values(shape, dtype, g)
    bound = deltas.max_magnitude(deltas.full(value))
    for _ in range(steps):
        kind = list(Kind)[int(torch.randint(0, len(Kind), (1,), generator=g))]
        d = any_delta(kind, shape, dtype, g)
        value = deltas.apply(value.clone(), d)
        bound = deltas.bound_after(bound, kind, deltas.max_magnitude(d))
        slack = 1 + 4 * torch.finfo(dtype).eps  # each stored add rounds once
        assert float(value.double().abs().max()) <= bound * slack**steps


def test_ascending_sparse_indices_give_a_tight_magnitude_and_repeats_add_up() -> None:
    values = torch.tensor([1.0, -2.0, 0.5])
    ascending = Delta(Kind.SPARSE, {"indices": torch.tensor([1, 4, 9]), "values": values})
    assert deltas.max_magnitude(ascending) == 2.0
    repeated = Delta(Kind.SPARSE, {"indices": torch.tensor([4, 4, 4]), "values": values})
    assert deltas.max_magnitude(repeated) == 3.5  # position 4 moves by up to 1 + 2 + 0.5
