"""Sparse and low-rank updates send exactly what was asked and, with error feedback, lose nothing in time."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import Tensor

from llmk.domain.optim import OptimizerSpec, optimizer_step
from llmk.domain.sparsify import (
    ErrorFeedback,
    low_rank,
    low_rank_with_feedback,
    topk_count,
    topk_with_feedback,
)
from llmk.errors import InvalidInput

FAST = settings(max_examples=30, deadline=None)


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _scatter(indices: Tensor, values: Tensor, like: Tensor) -> Tensor:
    return torch.zeros(like.numel(), dtype=values.dtype).index_add(0, indices, values).reshape(like.shape)


@FAST
@given(
    shape=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    fraction=st.floats(1e-3, 1.0),
    with_residual=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_topk_sends_exactly_k_largest_and_keeps_the_rest(
    shape: list[int], fraction: float, with_residual: bool, seed: int
) -> None:
    delta = _randn(*shape, seed=seed)
    residual = _randn(*shape, seed=seed + 1) if with_residual else None
    total = delta + residual if residual is not None else delta

    indices, values, new_residual = topk_with_feedback(delta, residual, fraction)

    k = topk_count(delta.numel(), fraction)
    assert k == min(delta.numel(), max(1, math.ceil(fraction * delta.numel() - 1e-6)))
    assert indices.dtype == torch.int64
    assert indices.shape == (k,)
    assert values.shape == (k,)
    assert torch.equal(indices, indices.unique())  # sorted and distinct
    sent = _scatter(indices, values, delta)
    assert int(torch.count_nonzero(sent)) == k
    assert new_residual.shape == delta.shape
    assert torch.equal(sent + new_residual, total)
    if k < delta.numel():
        assert values.abs().min() >= new_residual.abs().max()


@pytest.mark.parametrize(
    ("numel", "fraction", "k"),
    [(16384, 0.01, 164), (100, 0.07, 7), (100, 0.071, 8), (10, 1e-9, 1), (10, 1.0, 10), (0, 0.5, 0)],
)
def test_topk_count_is_ceil_of_fraction_at_least_one(numel: int, fraction: float, k: int) -> None:
    assert topk_count(numel, fraction) == k


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan, True])
def test_bad_fraction_is_rejected(fraction: float) -> None:
    with pytest.raises(InvalidInput, match="fraction"):
        topk_with_feedback(torch.ones(4), None, fraction)


def test_bad_update_or_residual_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="shape"):
        topk_with_feedback(torch.ones(4), torch.ones(5), 0.5)
    with pytest.raises(InvalidInput, match="NaN"):
        topk_with_feedback(torch.tensor([1.0, math.inf]), None, 0.5)
    with pytest.raises(InvalidInput, match="float"):
        topk_with_feedback(torch.ones(4, dtype=torch.int64), None, 0.5)


def test_error_feedback_conserves_every_update() -> None:
    """Whatever was not sent yet is still in the residual, so nothing is ever lost, only delayed."""
    feedback = ErrorFeedback()
    deltas = [_randn(8, 16, seed=step) for step in range(20)]
    sent = torch.zeros(8, 16)
    for delta in deltas:
        indices, values = feedback.topk("w", delta, 0.05)
        sent += _scatter(indices, values, delta)
    residual = feedback.residual("w")
    assert residual is not None
    torch.testing.assert_close(sent + residual, torch.stack(deltas).sum(0), atol=1e-5, rtol=0)


def test_low_precision_update_keeps_an_fp32_residual() -> None:
    delta = _randn(32, seed=3).to(torch.bfloat16)
    indices, values, residual = topk_with_feedback(delta, None, 0.25)
    assert values.dtype == torch.float32
    assert residual.dtype == torch.float32
    assert torch.equal(_scatter(indices, values, delta) + residual, delta.float())


def _regression(seed: int = 0) -> tuple[Tensor, Tensor]:
    """A noisy least-squares problem for a 256x64 weight matrix: the optimum's loss is well above zero."""
    inputs = _randn(256, 64, seed=seed)
    targets = inputs @ _randn(256, 64, seed=seed + 1).T + 0.5 * _randn(256, 256, seed=seed + 2)
    return inputs, targets


def _train(inputs: Tensor, targets: Tensor, mode: str, steps: int = 800) -> float:
    """Plain SGD whose every update is applied densely, top-1% with error feedback, or top-1% without."""
    spec = OptimizerSpec(kind="sgd", lr=0.02)
    weight = torch.zeros(256, 64)  # weight: [out, in]
    state: dict[str, Tensor] = {}
    feedback = ErrorFeedback(state)
    for _ in range(steps):
        error = inputs @ weight.T - targets  # error: [N, out]
        delta = optimizer_step(spec, {"w": weight}, {"w": error.T @ inputs / len(inputs)}, state)["w"]
        if mode == "dense":
            weight = weight + delta
            continue
        if mode == "topk":
            indices, values, _ = topk_with_feedback(delta, None, 0.01)
        else:
            indices, values = feedback.topk("w", delta, 0.01)
        assert indices.numel() == 164
        weight = weight + _scatter(indices, values, weight)
    return float(0.5 * (inputs @ weight.T - targets).square().sum() / len(inputs))


def test_topk_with_feedback_converges_like_dense_while_plain_topk_stalls() -> None:
    inputs, targets = _regression()
    dense, with_feedback, without_feedback = (
        _train(inputs, targets, m) for m in ("dense", "feedback", "topk")
    )
    optimum = float(
        0.5 * (inputs @ torch.linalg.lstsq(inputs, targets).solution - targets).square().sum() / 256
    )
    initial = float(0.5 * targets.square().sum() / 256)

    assert dense < 1.02 * optimum
    assert with_feedback < 1.03 * dense
    assert without_feedback > 10 * dense
    assert without_feedback < initial  # it does learn, just far too slowly


def test_residuals_persist_with_the_optimizer_state(tmp_path: Path) -> None:
    spec = OptimizerSpec(kind="adamw", lr=0.01, weight_decay=0.01)
    grads = [{"w": _randn(16, 8, seed=step)} for step in range(6)]

    def run(state: dict[str, Tensor], weight: Tensor, steps: list[dict[str, Tensor]]) -> Tensor:
        feedback = ErrorFeedback(state)
        for step_grads in steps:
            delta = optimizer_step(spec, {"w": weight}, step_grads, state)["w"]
            indices, values = feedback.topk("w", delta, 0.1)
            weight = weight + _scatter(indices, values, weight)
        return weight

    start = _randn(16, 8, seed=99)
    uninterrupted = run({}, start, grads)
    state: dict[str, Tensor] = {}
    halfway = run(state, start, grads[:3])
    assert {"w::residual", "w::exp_avg", "::step"} <= set(state)
    save_file(state, str(tmp_path / "state.safetensors"))
    resumed = run(load_file(str(tmp_path / "state.safetensors")), halfway, grads[3:])
    assert torch.equal(resumed, uninterrupted)
    assert set(ErrorFeedback(state).residuals()) == {"w::residual"}


def test_low_rank_recovers_a_low_rank_update_exactly() -> None:
    delta = _randn(20, 3, seed=1) @ _randn(3, 12, seed=2)  # delta: [20, 12], rank 3
    a, b = low_rank(delta, 3)
    assert a.shape == (20, 3)
    assert b.shape == (3, 12)
    torch.testing.assert_close(a @ b, delta, atol=1e-5, rtol=0)


def test_low_rank_with_feedback_keeps_what_the_factors_miss() -> None:
    delta = _randn(4, 5, 6, seed=4)  # viewed as [4, 30]
    a, b, residual = low_rank_with_feedback(delta, None, 2)
    assert a.shape == (4, 2)
    assert b.shape == (2, 30)
    assert residual.shape == delta.shape
    torch.testing.assert_close((a @ b).reshape(delta.shape) + residual, delta)
    assert low_rank(delta, 99)[0].shape == (4, 4)  # rank is capped by the matrix

    feedback, sent = ErrorFeedback(), torch.zeros(4, 5, 6)
    deltas = [_randn(4, 5, 6, seed=s) for s in range(10)]
    for step in deltas:
        a, b = feedback.low_rank("w", step, 1)
        sent += (a @ b).reshape(step.shape)
    carried = feedback.residual("w")
    assert carried is not None
    torch.testing.assert_close(sent + carried, torch.stack(deltas).sum(0), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("shape", "rank"), [((8,), 1), ((4, 4), 0), ((4, 4), 1.5)])
def test_bad_low_rank_request_is_rejected(shape: tuple[int, ...], rank: int) -> None:
    with pytest.raises(InvalidInput):
        low_rank(torch.ones(shape), rank)
