"""Typed parameter deltas and the exact encoding of one tensor's change.

A version entry is either a full tensor or a delta against the same tensor in the parent.
Each delta is a handful of named parts (plain tensors) so it stores as one safetensors
object: no pickle, and the parts are all a reader needs to rebuild it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from torch import Tensor

from llmk.errors import Corrupt, InvalidDelta


class Kind(StrEnum):
    FULL = "full"  # parts: tensor
    DENSE = "dense"  # parts: diff            -> base + diff
    SPARSE = "sparse"  # parts: indices, values -> base.flat[indices] += values
    SPARSE_SET = "sparse_set"  # parts: indices, values -> base.flat[indices] = values (exact)
    ROWS = "rows"  # parts: rows, values  -> base[rows] += values
    ROWS_SET = "rows_set"  # parts: rows, values  -> base[rows] = values (exact)
    LOW_RANK = "low_rank"  # parts: a, b          -> base + a @ b


PARTS: dict[Kind, tuple[str, ...]] = {
    Kind.FULL: ("tensor",),
    Kind.DENSE: ("diff",),
    Kind.SPARSE: ("indices", "values"),
    Kind.SPARSE_SET: ("indices", "values"),
    Kind.ROWS: ("rows", "values"),
    Kind.ROWS_SET: ("rows", "values"),
    Kind.LOW_RANK: ("a", "b"),
}


@dataclass(frozen=True)
class Delta:
    kind: Kind
    parts: dict[str, Tensor]

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parts.values())

    @property
    def nnz(self) -> int:
        """How many values of the tensor this entry can change."""
        p = self.parts
        if self.kind in (Kind.SPARSE, Kind.SPARSE_SET):
            return p["indices"].numel()
        if self.kind in (Kind.ROWS, Kind.ROWS_SET):
            return p["values"].numel()
        if self.kind is Kind.LOW_RANK:
            return p["a"].shape[0] * p["b"].shape[1]
        return next(iter(p.values())).numel()


def full(tensor: Tensor) -> Delta:
    return Delta(Kind.FULL, {"tensor": tensor})


def parse_kind(name: str) -> Kind:
    try:
        return Kind(name)
    except ValueError:
        raise InvalidDelta(
            f"unknown delta kind {name!r}; expected one of {[k.value for k in Kind]}"
        ) from None


def validate(name: str, delta: Delta, shape: tuple[int, ...] | None, dtype: torch.dtype | None) -> None:
    """Reject a delta that cannot apply to a tensor of `shape`/`dtype` (None: a new tensor)."""
    missing = set(PARTS[delta.kind]) - set(delta.parts)
    if missing:
        raise InvalidDelta(f"{name}: {delta.kind} delta lacks part(s) {sorted(missing)}")
    for part, t in delta.parts.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidDelta(f"{name}: part {part!r} contains NaN or Inf")
    if delta.kind is Kind.FULL:
        return
    if shape is None or dtype is None:
        raise InvalidDelta(f"{name}: a {delta.kind} delta needs an existing tensor; send it as full")
    _validate_against(name, delta, shape, dtype)


def _validate_against(name: str, delta: Delta, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    p, numel = delta.parts, math.prod(shape)
    values = p.get("values", p.get("diff"))
    if values is not None and values.dtype != dtype:
        raise InvalidDelta(f"{name}: delta dtype {values.dtype} does not match tensor dtype {dtype}")
    if delta.kind is Kind.DENSE and tuple(p["diff"].shape) != shape:
        raise InvalidDelta(f"{name}: shape mismatch: diff {tuple(p['diff'].shape)} vs tensor {shape}")
    if delta.kind in (Kind.SPARSE, Kind.SPARSE_SET):
        _check_index(name, p["indices"], numel, "index")
        if p["values"].shape != p["indices"].shape:
            raise InvalidDelta(f"{name}: {p['indices'].numel()} indices but {p['values'].numel()} values")
    ids = p["indices"] if "indices" in p else p.get("rows")
    replaces = delta.kind in (Kind.SPARSE_SET, Kind.ROWS_SET)
    if replaces and ids is not None and not ascending(ids) and ids.numel() != ids.unique().numel():
        raise InvalidDelta(f"{name}: a {delta.kind} delta names a position twice (ambiguous replacement)")
    if delta.kind in (Kind.ROWS, Kind.ROWS_SET):
        _check_index(name, p["rows"], shape[0] if shape else 0, "row")
        if tuple(p["values"].shape) != (p["rows"].numel(), *shape[1:]):
            raise InvalidDelta(f"{name}: rows values shape {tuple(p['values'].shape)} does not fit {shape}")
    if delta.kind is Kind.LOW_RANK:
        _check_low_rank(name, p["a"], p["b"], shape, dtype)


def _check_low_rank(name: str, a: Tensor, b: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if len(shape) != 2 or a.dim() != 2 or b.dim() != 2 or (a.shape[0], b.shape[1]) != shape:
        raise InvalidDelta(f"{name}: low-rank a{tuple(a.shape)} @ b{tuple(b.shape)} does not give {shape}")
    if a.shape[1] != b.shape[0] or a.dtype != dtype or b.dtype != dtype:
        raise InvalidDelta(f"{name}: low-rank factors disagree in rank or dtype")


def _check_index(name: str, idx: Tensor, bound: int, what: str) -> None:
    if idx.dtype not in (torch.int32, torch.int64) or idx.dim() != 1:
        raise InvalidDelta(f"{name}: {what} ids must be a 1-D int32/int64 tensor")
    if not idx.numel():
        return
    low, high = (int(x) for x in torch.aminmax(idx))
    if low < 0 or high >= bound:
        raise InvalidDelta(f"{name}: {what} out of range [0, {bound}): {low}..{high}")


def apply(base: Tensor | None, delta: Delta) -> Tensor:
    """Return base with delta applied. Mutates and returns `base` when it is a writable copy."""
    p = delta.parts
    if delta.kind is Kind.FULL:
        return p["tensor"]
    assert base is not None
    if delta.kind is Kind.DENSE:
        return base.add_(p["diff"])
    if delta.kind is Kind.LOW_RANK:
        return base.add_((p["a"].float() @ p["b"].float()).to(base.dtype))
    if delta.kind in (Kind.ROWS, Kind.ROWS_SET):
        rows = _stored_ids(p["rows"], base.shape[0] if base.dim() else 0, "row")
        if delta.kind is Kind.ROWS_SET:
            base[rows] = p["values"]
        else:
            base.index_add_(0, rows, p["values"])
        return base
    flat = base.view(-1)
    idx = _stored_ids(p["indices"], flat.numel(), "index")
    if delta.kind is Kind.SPARSE_SET:
        flat[idx] = p["values"]
    else:
        flat.index_add_(0, idx, p["values"])
    return base


def _stored_ids(ids: Tensor, bound: int, what: str) -> Tensor:
    """`ids` as int64, checked to lie in [0, bound): a stored entry passed validation when it was
    committed, so one that does not fit is a damaged object, not a bad request."""
    wide = ids.long()
    if wide.numel():
        low, high = torch.aminmax(wide)
        if int(low) < 0 or int(high) >= bound:
            raise Corrupt(f"stored {what} ids {int(low)}..{int(high)} fall outside [0, {bound})")
    return wide


# Entries that write given values; the others add to what is stored.
REPLACING = frozenset({Kind.FULL, Kind.SPARSE_SET, Kind.ROWS_SET})


def max_magnitude(delta: Delta) -> float:
    """An upper bound on the magnitude the entry writes (replacing kinds) or adds (the others) at any one
    position; it only has to be cheap and sound, since a bound near overflow falls back to an exact check.

    Repeated positions add up: sparse values bound a position by their largest only when the indices are
    ascending (no repeats, as the optimizer sends them), else by their sum; row values by their column sums.
    A low-rank product is bounded by the sum over its rank of each factor's largest column and row entry.
    """
    p = delta.parts
    if delta.kind is Kind.LOW_RANK:
        a, b = p["a"].double().abs(), p["b"].double().abs()
        if a.numel() == 0 or b.numel() == 0:
            return 0.0
        return float((a.amax(dim=0) * b.amax(dim=1)).sum())
    values = p["tensor"] if delta.kind is Kind.FULL else p.get("values", p.get("diff"))
    if values is None or values.numel() == 0 or not values.is_floating_point():
        return 0.0
    magnitude = values.double().abs()
    if delta.kind in REPLACING or delta.kind is Kind.DENSE:
        return float(magnitude.max())
    if delta.kind is Kind.ROWS:
        return float(magnitude.sum(dim=0).max())
    return float(magnitude.max() if ascending(p["indices"]) else magnitude.sum())


def ascending(ids: Tensor) -> bool:
    """Strictly ascending positions, so none repeats: checked in one pass, where unique() sorts."""
    return ids.numel() < 2 or bool((ids[1:] > ids[:-1]).all())


def bound_after(before: float, kind: Kind, entry_magnitude: float) -> float:
    """An upper bound on |value| anywhere after an entry of `kind` and `entry_magnitude` is applied."""
    if kind is Kind.FULL:
        return entry_magnitude
    if kind in REPLACING:
        return max(before, entry_magnitude)
    return before + entry_magnitude


def changed_mask(old: Tensor, new: Tensor) -> Tensor:
    """Positions whose bits differ (so -0.0 vs 0.0 and NaN payloads count as changes)."""
    if old.dtype.is_floating_point and old.element_size() in (2, 4, 8):
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[old.element_size()]
        return old.view(view) != new.view(view)
    return old != new


def changed_positions(old: Tensor, new: Tensor) -> np.ndarray:
    """Ascending flat positions whose bits differ, as int64.

    Scanned in cache-sized blocks on the calling thread: on a shared 2-core host torch's parallel
    compare and nonzero waited 10-20x longer for their second thread than one thread took to do the
    work (bench/results/speed-notes.md), and a whole-tensor mask costs a pass over memory of its own.
    """
    bits = _BITS.get(new.element_size())
    if bits is None or new.is_complex():
        return changed_mask(old, new).reshape(-1).nonzero().view(-1).numpy()
    a, b = _bits(old, bits), _bits(new, bits)
    found = [
        np.flatnonzero(a[s : s + SCAN_BLOCK] != b[s : s + SCAN_BLOCK]) + s
        for s in range(0, a.size, SCAN_BLOCK)
    ]
    return np.concatenate([f for f in found if f.size] or [np.empty(0, np.int64)]).astype(
        np.int64, copy=False
    )


def encode_exact(old: Tensor | None, new: Tensor) -> Delta | None:
    """The cheapest entry that turns `old` into exactly `new`, or None when nothing changed.

    Differences are not exact in floating point (a + (b - a) may differ from b), so the
    sparse and row encodings carry replacement values; a full copy wins past ~50% change.
    Sizes are compared before anything is built, so only the chosen encoding is gathered.
    """
    if old is None or old.shape != new.shape or old.dtype != new.dtype:
        return full(new)
    idx = changed_positions(old, new)
    if idx.size == 0:
        return None
    index_dtype, item = (np.int32, 4) if new.numel() < 2**31 else (np.int64, 8)
    size = new.element_size()
    options: list[tuple[int, Kind]] = [
        (new.numel() * size, Kind.FULL),
        (idx.size * (item + size), Kind.SPARSE_SET),
    ]
    rows = np.empty(0, np.int64)
    if new.dim() >= 2:
        row_len = new.numel() // new.shape[0]
        at_row = idx // row_len  # idx ascends, so each row's changes are adjacent: one pass, no sort
        rows = at_row[np.flatnonzero(np.diff(at_row, prepend=-1))]
        options.append((rows.size * (item + row_len * size), Kind.ROWS_SET))
    kind = min(options, key=lambda o: o[0])[1]  # ties go to the earlier option, as before
    if kind is Kind.FULL:
        return full(new)
    if kind is Kind.SPARSE_SET:
        values = _gather(new.reshape(-1), idx)
        return Delta(kind, {"indices": torch.from_numpy(idx.astype(index_dtype)), "values": values})
    values = _gather(new.reshape(new.shape[0], -1), rows).reshape(rows.size, *new.shape[1:])
    return Delta(kind, {"rows": torch.from_numpy(rows.astype(index_dtype)), "values": values})


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
SCAN_BLOCK = 1 << 16  # elements per compare: the block's mask stays in cache


def _bits(t: Tensor, bits: torch.dtype) -> np.ndarray:
    return t.detach().reshape(-1).view(bits).numpy()


def _gather(t: Tensor, at: np.ndarray) -> Tensor:
    """t[at] along the first dimension, copied on this thread (see changed_positions)."""
    bits = _BITS.get(t.element_size())
    if bits is None or t.is_complex():
        return t[torch.from_numpy(at)]
    flat = t.detach().view(bits).numpy()
    return torch.from_numpy(np.take(flat, at, axis=0)).view(t.dtype)
