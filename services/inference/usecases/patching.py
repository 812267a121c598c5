"""Applying a version's typed entries to a served model in place: the cheap path of a hot update.

A sparse, row or low-rank entry is applied to the weight the model holds, with the same operation the store
uses to rebuild the version (domain.deltas.apply), so the result is bit-identical to fetching the new value.
That holds when the weight is plain (not pruned, int8 or offloaded) and held as stored: same dtype, and
for additive kinds on the CPU, where the store computes. A `_set` kind writes exact values, so it is
exact in any dtype and device. Everything else needs the whole new value (`whole`), written through
set_weight, which keeps the weight's form. What was written in place is read back at the positions the entry
names and compared bit for bit, instead of comparing whole tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from llmk.domain.deltas import Delta, Kind, apply, ascending, changed_mask
from llmk.errors import InvalidDelta
from services.inference.engine.weights import weight_rules
from services.store.interface import Step

EXACT_ANYWHERE = (Kind.SPARSE_SET, Kind.ROWS_SET)
INDEXED = (Kind.SPARSE, Kind.SPARSE_SET, Kind.ROWS, Kind.ROWS_SET)


@dataclass
class Patch:
    """What to write for one update: entries to apply in order, and names that need their whole value."""

    in_place: list[tuple[str, Delta]] = field(default_factory=list)
    whole: set[str] = field(default_factory=set)


def plan(model: nn.Module, steps: Sequence[Step]) -> Patch:
    """Split the entries of `steps` (oldest first) into in-place applications and whole values."""
    params = dict(model.named_parameters())
    patch = Patch()
    for step in steps:
        for name, delta in step.entries.items():
            if name in patch.whole:
                continue
            if not _in_place_ok(model, params.get(name), name, delta):
                patch.whole.add(name)
                patch.in_place = [(n, d) for n, d in patch.in_place if n != name]
                continue
            patch.in_place.append((name, delta))
    return patch


def apply_in_place(model: nn.Module, name: str, delta: Delta) -> None:
    """Apply one entry to the held weight and check the positions it wrote; InvalidDelta if they differ."""
    weight = model.get_parameter(name).data  # [*shape], plain and contiguous (see plan)
    parts = {k: p.to(weight.device) for k, p in delta.parts.items()}
    for ids in ("indices", "rows"):  # widened once here, not in each of the three index operations below
        if ids in parts:
            parts[ids] = parts[ids].long()
    if delta.kind in EXACT_ANYWHERE:
        parts["values"] = parts["values"].to(weight.dtype)
    delta = Delta(delta.kind, parts)
    expected = _expected_region(weight, delta)
    with torch.no_grad():
        if delta.kind in INDEXED:
            apply(weight, delta)
        else:  # dense and low-rank change every value: computed aside (as the store does), then copied in
            weight.copy_(apply(weight.clone(), delta))
        weight_rules(model).writes += 1  # what was computed from the old weights is stale now
    if expected is not None and changed_mask(_region(weight, delta), expected).any():
        raise InvalidDelta(f"{name}: the served weight differs from the entry after writing it")


def _in_place_ok(model: nn.Module, param: nn.Parameter | None, name: str, delta: Delta) -> bool:
    rules = weight_rules(model)
    held_aside = rules.placement is not None and rules.placement.shape_of(name) is not None
    if delta.kind is Kind.FULL or name in rules.forms or held_aside or param is None:
        return False
    weight = param.data
    if type(weight) is not Tensor or weight.layout != torch.strided or not weight.is_contiguous():
        return False
    if delta.kind in EXACT_ANYWHERE:
        return True
    stored = (
        next(iter(delta.parts.values()))
        if delta.kind in (Kind.DENSE, Kind.LOW_RANK)
        else delta.parts["values"]
    )
    return weight.dtype == stored.dtype and weight.device.type == "cpu"


def _region(weight: Tensor, delta: Delta) -> Tensor:
    """The values at the positions an indexed entry names (index_select: a plain gather, no index kernel)."""
    if delta.kind in (Kind.ROWS, Kind.ROWS_SET):
        return torch.index_select(weight, 0, delta.parts["rows"].long())
    return torch.index_select(weight.view(-1), 0, delta.parts["indices"].long())


def _expected_region(weight: Tensor, delta: Delta) -> Tensor | None:
    """What the named positions must hold after the write; None where positions repeat (adds accumulate)."""
    if delta.kind not in INDEXED:
        return None
    values = delta.parts["values"]
    if delta.kind in EXACT_ANYWHERE:
        return values
    ids = delta.parts["rows" if delta.kind is Kind.ROWS else "indices"]
    if not ascending(ids) and ids.unique().numel() != ids.numel():
        return None
    return _region(weight, delta) + values
