"""Sparse positions stored as escape-coded gaps instead of flat int32/int64 indices.

A 1% change to a 16-bit tensor stores one index per changed value; as int32 the index costs twice the
value, 3% of the tensor's bytes. Sorted, neighbouring positions lie about 100 apart, so a gap fits in one
or two bytes. The code is one stream of unsigned symbols: a symbol below ESCAPE (the width's largest value)
ends a gap, and ESCAPE adds ESCAPE to the gap and goes on, so a gap of any size costs one symbol plus one
per ESCAPE it spans, and decoding is a single cumulative sum. Of the two widths (8 and 16 bits) the
smaller stream is kept, and the flat indices when neither is smaller.

Why not "first index + fixed-width gaps, the width chosen by the largest gap": one far jump (a change at
both ends of a matrix) would force every gap of that tensor back to 32 bits; here it costs a few escapes.

In a pack of tensors an ``X/indices`` + ``X/values`` pair (a sparse delta, a sparse gradient) is coded as
``X/indices.gaps``, values sorted with their indices by a stable sort: a replacement never names a position
twice, and repeats of an addition keep their order, so applying the sorted pair gives the same bits. The
safetensors metadata says which keys are coded, so files written before this code read as they always did,
and a reader that does not know the code finds no ``X/indices`` rather than wrong positions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from llmk.errors import Corrupt, InvalidDelta

WIDTHS = (torch.uint8, torch.uint16)
NUMPY = {torch.uint8: np.uint8, torch.uint16: np.uint16}
INDEX_DTYPES = {"int32": torch.int32, "int64": torch.int64}
CODED = "llmk.coded_indices"  # metadata key: JSON {stored key: [key, index dtype, count]}
SUFFIX = ".gaps"


def escape(width: torch.dtype) -> int:
    return int(torch.iinfo(width).max)


def encode(indices: Tensor, width: torch.dtype) -> Tensor:
    """The symbol stream of non-decreasing, non-negative 1-D `indices`, in `width` (uint8 or uint16)."""
    gaps = _checked_gaps(indices)
    return _symbols(gaps, width, gaps // escape(width))


def decode(symbols: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """The `count` indices (as `dtype`) that `symbols` codes; Corrupt for any stream `encode` cannot give.

    Checked before the sum: the symbols' total is the last index, so it also says whether an int32 sum
    cannot overflow (half the bytes of int64). Widening and masking go through numpy, whose uint16 and
    boolean-selection loops are several times torch's; the sum stays in torch, which vectorizes it.
    """
    if symbols.dtype not in WIDTHS or symbols.dim() != 1:
        shape = tuple(symbols.shape)
        raise Corrupt(f"coded indices must be a 1-D uint8/uint16 stream, not {symbols.dtype} {shape}")
    raw, esc = symbols.numpy(), escape(symbols.dtype)
    if raw.size and raw[-1] == esc:
        raise Corrupt("coded indices end inside a gap (a trailing escape symbol)")
    if (found := raw.size - (escapes := int(np.count_nonzero(raw == esc)))) != count:
        raise Corrupt(f"coded indices hold {found} positions where {count} were written")
    if (last := int(raw.sum(dtype=np.int64))) > torch.iinfo(dtype).max:
        raise Corrupt(f"coded indices reach {last}, past what {dtype} holds")
    sums = torch.from_numpy(raw.astype(np.int32 if last < 2**31 else np.int64)).cumsum_(0)
    if escapes:
        sums = torch.from_numpy(sums.numpy()[raw != esc])
    return sums.to(dtype)


def smallest(indices: Tensor, margin: int = 0) -> Tensor | None:
    """The smallest symbol stream of non-decreasing, non-negative `indices`; None unless it is more than
    `margin` bytes smaller than the flat indices."""
    return _smallest(_checked_gaps(indices), indices.numel() * indices.element_size() - margin)


def compact(tensors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The pack to store, with each codable ``X/indices`` + ``X/values`` pair coded where that is smaller,
    and the metadata that says so (empty when nothing was coded)."""
    out, coded = dict(tensors), {}
    for key, idx in tensors.items():
        values_key, stored = key.removesuffix("indices") + "values", key + SUFFIX
        values = tensors.get(values_key)
        if not key.endswith("/indices") or values is None or stored in tensors or not _codable(idx, values):
            continue
        gaps = _gaps(idx)
        if gaps.size > 1 and int(gaps[1:].min()) < 0:  # not in order: sort, values with their indices
            idx, values = sort_pairs(idx, values)
            gaps = _gaps(idx)
        if gaps.size and int(gaps[0]) < 0:  # a negative index, left for validation to refuse
            continue
        budget = idx.numel() * idx.element_size() - _metadata_bytes(key)
        if (stream := _smallest(gaps, budget)) is None:
            continue
        del out[key]
        out[stored], out[values_key] = stream, values
        coded[stored] = [key, str(idx.dtype).removeprefix("torch."), idx.numel()]
    return out, ({CODED: json.dumps(coded)} if coded else {})


def sort_pairs(indices: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Indices in ascending order with their values; equal indices keep their order (a stable sort)."""
    order = torch.sort(indices, stable=True).indices
    return indices[order], values[order]


def coded_keys(metadata: Mapping[str, str] | None) -> dict[str, tuple[str, torch.dtype, int]]:
    """Key -> (stored key, index dtype, count) for each coded pair a file's metadata names."""
    raw = (metadata or {}).get(CODED)
    if raw is None:
        return {}
    try:
        entries = json.loads(raw)
        out = {}
        for stored, (key, dtype, count) in entries.items():
            if type(count) is not int or count < 0 or stored != key + SUFFIX:
                raise ValueError(f"bad entry for {stored!r}")
            out[key] = (stored, INDEX_DTYPES[dtype], count)
        return out
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise Corrupt(f"unreadable {CODED} metadata: {e}") from None


def _metadata_bytes(key: str) -> int:
    """About what coding a pair adds to the file's header (its metadata entry, a longer key): a few
    changes to a small tensor (a norm's 1%) save less than that and stay flat, and skip a decode too."""
    return 2 * len(key) + len(SUFFIX) + 32


def _codable(indices: Tensor, values: Tensor) -> bool:
    on_cpu = indices.device.type == values.device.type == "cpu"  # the coding runs in numpy
    return (
        on_cpu
        and indices.dtype in INDEX_DTYPES.values()
        and indices.dim() == 1
        and values.shape == indices.shape
    )


def _smallest(gaps: np.ndarray, budget: int) -> Tensor | None:
    """The smaller stream of the two widths, if it takes fewer than `budget` bytes."""
    escapes = {w: gaps // escape(w) for w in WIDTHS}  # per gap, the escapes before its closing symbol
    sizes = {w: (gaps.size + int(far.sum())) * w.itemsize for w, far in escapes.items()}
    width = min(sizes, key=lambda w: sizes[w])
    return _symbols(gaps, width, escapes[width]) if sizes[width] < budget else None


def _symbols(gaps: np.ndarray, width: torch.dtype, far: np.ndarray) -> Tensor:
    """Gaps as symbols: numpy divides by a constant and scatters faster, torch sums faster."""
    esc, symbol = escape(width), NUMPY[width]
    if not far.any():
        return torch.from_numpy(gaps.astype(symbol))
    total = gaps.size + int(far.sum())
    position = torch.int32 if total < 2**31 else torch.int64  # int32 sums are vectorized, int64 ones not
    ends = torch.cumsum(torch.from_numpy(far), 0, dtype=position)  # where closing symbols land
    ends += torch.arange(gaps.size, dtype=position)
    out = np.full(total, esc, dtype=symbol)
    out[ends.numpy()] = gaps - far * esc
    return torch.from_numpy(out)


def _checked_gaps(indices: Tensor) -> np.ndarray:
    gaps = _gaps(indices)
    if gaps.size and int(gaps.min()) < 0:
        raise InvalidDelta("only non-decreasing, non-negative indices can be gap-coded")
    return gaps


def _gaps(indices: Tensor) -> np.ndarray:
    """Each index minus the one before (the first minus 0), in the indices' own dtype: int32 indices give
    int32 gaps, which halves the memory the arithmetic walks through."""
    flat = indices.numpy()
    return np.diff(flat, prepend=flat.dtype.type(0))
