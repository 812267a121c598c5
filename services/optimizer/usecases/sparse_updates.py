"""Turning optimizer updates into store entries: top-k (or low-rank) with error feedback, encoded exactly.

The values a job trains on are always the values the store serves: each committed entry replaces exactly
the positions it changes (the store's cheapest exact encoding), and whatever was not committed waits in the
tensor's residual (``NAME::residual`` in the optimizer state) for the next commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from llmk.domain import deltas
from llmk.domain.deltas import Delta, Kind
from llmk.domain.sparsify import RESIDUAL_SLOT, ErrorFeedback
from llmk.errors import InvalidInput


@dataclass(frozen=True)
class Update:
    entries: dict[str, Delta]  # what to commit; unchanged tensors are left out
    values: dict[str, Tensor]  # every trainable tensor's value once the entries apply

    @property
    def nnz(self) -> int:
        return sum(d.nnz for d in self.entries.values())

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.entries.values())


def discard_residuals(state: dict[str, Tensor]) -> None:
    """Forget what error feedback carried: after a held-back version it is drift that only grows (each
    later top-k would pick its largest, stalest entries), so the job restarts from the last served weights."""
    for key in [k for k in state if k.endswith("::" + RESIDUAL_SLOT)]:
        del state[key]


def defer(state: dict[str, Tensor], step_deltas: Mapping[str, Tensor]) -> None:
    """A step that does not commit: its updates wait in the residuals for the next commit."""
    feedback = ErrorFeedback(state)
    for name, delta in step_deltas.items():
        residual = feedback.residual(name)
        state[feedback.key(name)] = delta.float() if residual is None else residual + delta.float()


def compress(
    params: Mapping[str, Tensor],
    step_deltas: Mapping[str, Tensor],
    state: dict[str, Tensor],
    topk: float,
    rank: int = 0,
) -> Update:
    """Entries carrying the largest ``topk`` fraction of (update + residual) per tensor, or its rank-``rank``
    factors for matrices when ``rank > 0``; ``state`` keeps what was left out."""
    feedback = ErrorFeedback(state)
    entries: dict[str, Delta] = {}
    values: dict[str, Tensor] = {}
    for name, old in params.items():
        entry: Delta | None
        if rank and old.dim() == 2:
            new, entry = _low_rank(feedback, name, old, step_deltas[name], rank)
        else:
            new = _topk(feedback, name, old, step_deltas[name], topk)
            entry = deltas.encode_exact(old, new)
        if not bool(torch.isfinite(new).all()):
            raise InvalidInput(f"the update makes {name!r} NaN or Inf; nothing was committed")
        values[name] = new
        if entry is not None:
            entries[name] = entry
    return Update(entries, values)


def _topk(feedback: ErrorFeedback, name: str, old: Tensor, delta: Tensor, fraction: float) -> Tensor:
    indices, values = feedback.topk(name, delta, fraction)
    target = old.reshape(-1)[indices].float() + values
    new = old.clone()
    new.view(-1)[indices] = target.to(old.dtype)
    # what rounding to the tensor's dtype lost is carried too, so bf16 tensors still see every update
    feedback.state[feedback.key(name)].view(-1)[indices] += target - new.view(-1)[indices].float()
    return new


def _low_rank(
    feedback: ErrorFeedback, name: str, old: Tensor, delta: Tensor, rank: int
) -> tuple[Tensor, Delta]:
    a, b = feedback.low_rank(name, delta, rank)
    entry = Delta(Kind.LOW_RANK, {"a": a.to(old.dtype).contiguous(), "b": b.to(old.dtype).contiguous()})
    return deltas.apply(old.clone(), entry), entry
