"""Compress optimizer updates before they are committed, carrying what was dropped into the next step.

Sending only the top 1% of an update is cheap but, on its own, throws the other 99% away and training
stalls. Error feedback keeps the dropped part as a residual and adds it to the next update, so every update is
eventually applied in full: what was sent plus the current residual always sums to the updates so far.
Residuals live in a flat dict of tensors (``"NAME::residual"``) that merges into the optimizer state and is
saved with it, so a resumed job loses nothing either.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llmk.errors import InvalidInput

RESIDUAL_SLOT = "residual"


def topk_count(numel: int, fraction: float) -> int:
    """How many entries top-k keeps: ``ceil(fraction * numel)``, at least one, at most ``numel``."""
    _check_fraction(fraction)
    # The tolerance keeps float noise (0.07 * 100 == 7.000000000000001) from adding an entry.
    return min(numel, max(1, math.ceil(fraction * numel - 1e-6)))


def topk_with_feedback(
    delta: Tensor, residual: Tensor | None, fraction: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``topk_count`` entries of largest ``|delta + residual|``; the rest becomes the new residual.

    Returns ascending flat int64 indices, their values (fp32 or wider), and the new residual (same shape as
    ``delta``, zero at the kept indices). ``residual=None`` means no carried error, e.g. on the first step.
    """
    total = _accumulate(delta, residual).reshape(-1)
    k = topk_count(total.numel(), fraction)
    indices = torch.topk(total.abs(), k, sorted=False).indices.sort().values
    values = total[indices]
    new_residual = total.clone()
    new_residual[indices] = 0
    return indices, values, new_residual.reshape(delta.shape)


def low_rank(delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The best rank-``rank`` approximation ``a @ b`` of ``delta`` seen as ``[shape[0], -1]`` (truncated SVD).

    ``a`` is ``[m, r]`` with the singular values folded in and ``b`` is ``[r, n]``; ``r = min(rank, m, n)``.
    """
    _check_matrix(delta, rank)
    matrix = delta.float().reshape(delta.shape[0], -1)  # matrix: [m, n]
    r = min(rank, *matrix.shape)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)  # u: [m, q], s: [q], vh: [q, n]
    return u[:, :r] * s[:r], vh[:r]


def low_rank_with_feedback(
    delta: Tensor, residual: Tensor | None, rank: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``low_rank`` of ``delta + residual``; what the factors miss becomes the new residual."""
    total = _accumulate(delta, residual)
    a, b = low_rank(total, rank)
    return a, b, total - (a @ b).reshape(total.shape)


class ErrorFeedback:
    """Compresses named updates and keeps each tensor's residual under ``"NAME::residual"`` in ``state``.

    Pass the optimizer's state dict as ``state`` to keep residuals next to the moments in one saved file.
    """

    def __init__(self, state: dict[str, Tensor] | None = None) -> None:
        self.state: dict[str, Tensor] = {} if state is None else state

    @staticmethod
    def key(name: str) -> str:
        return f"{name}::{RESIDUAL_SLOT}"

    def residual(self, name: str) -> Tensor | None:
        return self.state.get(self.key(name))

    def topk(self, name: str, delta: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
        """Top-k of ``delta`` plus the carried residual; returns flat indices and values to send."""
        indices, values, new_residual = topk_with_feedback(delta, self.residual(name), fraction)
        self.state[self.key(name)] = new_residual
        return indices, values

    def low_rank(self, name: str, delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
        """Low-rank factors of ``delta`` plus the carried residual; returns ``(a, b)`` to send."""
        a, b, new_residual = low_rank_with_feedback(delta, self.residual(name), rank)
        self.state[self.key(name)] = new_residual
        return a, b

    def residuals(self) -> dict[str, Tensor]:
        """Only the residual entries, e.g. to save them apart from the optimizer state."""
        suffix = self.key("")
        return {key: value for key, value in self.state.items() if key.endswith(suffix)}


def _accumulate(delta: Tensor, residual: Tensor | None) -> Tensor:
    """``delta + residual`` in at least fp32, so small carried errors are not rounded away in bf16."""
    if not delta.is_floating_point():
        raise InvalidInput(f"update must be a float tensor, got {delta.dtype}")
    dtype = torch.promote_types(delta.dtype, torch.float32)
    total = delta.to(dtype)
    if residual is not None:
        if residual.shape != delta.shape:
            raise InvalidInput(f"residual has shape {tuple(residual.shape)}, update has {tuple(delta.shape)}")
        total = total + residual.to(dtype)
    if not bool(torch.isfinite(total).all()):
        raise InvalidInput("update or residual contains NaN or Inf")
    return total


def _check_fraction(fraction: float) -> None:
    ok = isinstance(fraction, int | float) and not isinstance(fraction, bool) and 0 < fraction <= 1
    if not ok:
        raise InvalidInput(f"fraction must be in (0, 1], got {fraction!r}")


def _check_matrix(delta: Tensor, rank: int) -> None:
    if delta.ndim < 2:
        raise InvalidInput(f"low-rank needs a tensor of 2 or more dimensions, got shape {tuple(delta.shape)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InvalidInput(f"rank must be an integer >= 1, got {rank!r}")
