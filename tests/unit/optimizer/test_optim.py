"""The optimizer math must match torch.optim step for step and resume from saved state without drift."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import Tensor

from llmk.domain.optim import STEP_KEY, OptimizerKind, OptimizerSpec, clip_grad_norm, optimizer_step
from llmk.errors import InvalidInput

SHAPES = {"embed.weight": (6, 5), "norm.bias": (5,), "conv.weight": (2, 3, 4)}
STEPS = 10
FAST = settings(max_examples=25, deadline=None)

Tensors = dict[str, Tensor]


def _random(seed: int, scale: float = 1.0) -> Tensors:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) * scale for name, shape in SHAPES.items()}


def _grad_sequence(seed: int, steps: int = STEPS) -> list[Tensors]:
    return [_random(seed * 1000 + step + 1) for step in range(steps)]


def _torch_optimizer(spec: OptimizerSpec, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if spec.kind == "sgd":
        return torch.optim.SGD(
            params,
            lr=spec.lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
            foreach=False,
        )
    cls = torch.optim.Adam if spec.kind == "adam" else torch.optim.AdamW
    return cls(
        params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay, foreach=False
    )


def _run_torch(spec: OptimizerSpec, start: Tensors, grads: Sequence[Tensors]) -> Tensors:
    params = {name: torch.nn.Parameter(value.clone()) for name, value in start.items()}
    optimizer = _torch_optimizer(spec, list(params.values()))
    for step_grads in grads:
        for name, param in params.items():
            param.grad = step_grads[name].clone()
        if spec.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), spec.max_grad_norm)
        optimizer.step()
    return {name: param.detach() for name, param in params.items()}


def _run_ours(
    spec: OptimizerSpec, start: Tensors, grads: Sequence[Tensors], state: dict[str, Tensor] | None = None
) -> tuple[Tensors, dict[str, Tensor]]:
    params = {name: value.clone() for name, value in start.items()}
    state = {} if state is None else state
    for step_grads in grads:
        deltas = optimizer_step(spec, params, step_grads, state)
        params = {name: params[name] + deltas[name] for name in params}
    return params, state


def _assert_matches_torch(spec: OptimizerSpec, seed: int) -> None:
    start, grads = _random(seed), _grad_sequence(seed)
    ours, _ = _run_ours(spec, start, grads)
    theirs = _run_torch(spec, start, grads)
    for name in SHAPES:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-6, rtol=0)


seeds = st.integers(0, 2**16)
lrs = st.floats(1e-4, 0.3)
decays = st.sampled_from([0.0]) | st.floats(1e-4, 0.1)


@FAST
@given(
    lr=lrs,
    momentum=st.sampled_from([0.0]) | st.floats(0.05, 0.99),
    nesterov=st.booleans(),
    wd=decays,
    seed=seeds,
)
@example(lr=0.1, momentum=0.0, nesterov=False, wd=0.0, seed=1)
@example(lr=0.1, momentum=0.9, nesterov=False, wd=0.0, seed=2)
@example(lr=0.1, momentum=0.9, nesterov=True, wd=0.0, seed=3)
@example(lr=0.1, momentum=0.9, nesterov=True, wd=0.01, seed=4)
@example(lr=0.1, momentum=0.0, nesterov=False, wd=0.01, seed=5)
def test_sgd_matches_torch(lr: float, momentum: float, nesterov: bool, wd: float, seed: int) -> None:
    spec = OptimizerSpec(
        kind="sgd", lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=wd
    )
    _assert_matches_torch(spec, seed)


@FAST
@given(
    kind=st.sampled_from(["adam", "adamw"]),
    lr=st.floats(1e-4, 0.1),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.9999),
    eps=st.sampled_from([1e-8, 1e-6, 1e-3]),
    wd=decays,
    seed=seeds,
)
@example(kind="adam", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, seed=1)
@example(kind="adam", lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.05, seed=2)
@example(kind="adamw", lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.05, seed=3)
def test_adam_and_adamw_match_torch(
    kind: OptimizerKind, lr: float, beta1: float, beta2: float, eps: float, wd: float, seed: int
) -> None:
    spec = OptimizerSpec(kind=kind, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    _assert_matches_torch(spec, seed)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_clipping_inside_the_step_matches_torch(kind: OptimizerKind) -> None:
    momentum = 0.9 if kind == "sgd" else 0.0
    spec = OptimizerSpec(kind=kind, lr=0.01, momentum=momentum, weight_decay=0.01, max_grad_norm=0.5)
    _assert_matches_torch(spec, seed=7)


def test_low_precision_params_step_in_fp32() -> None:
    """bf16 weights get the update an fp32 master copy would get, in fp32 so nothing rounds it early."""
    spec = OptimizerSpec(kind="adamw", lr=1e-3, weight_decay=0.01)
    start = {name: value.to(torch.bfloat16) for name, value in _random(3).items()}
    grads = {name: grad.to(torch.float16) for name, grad in _random(4).items()}
    state: dict[str, Tensor] = {}

    deltas = optimizer_step(spec, start, grads, state)

    master = _run_torch(
        spec, {n: v.float() for n, v in start.items()}, [{n: g.float() for n, g in grads.items()}]
    )
    for name in SHAPES:
        assert deltas[name].dtype == torch.float32
        assert start[name].dtype == torch.bfloat16
        assert state[f"{name}::exp_avg"].dtype == torch.float32
        torch.testing.assert_close(start[name].float() + deltas[name], master[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "spec",
    [
        OptimizerSpec(kind="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
        OptimizerSpec(kind="adam", lr=0.01, weight_decay=0.01, max_grad_norm=1.0),
        OptimizerSpec(kind="adamw", lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_state_saved_to_safetensors_resumes_exactly(spec: OptimizerSpec, tmp_path: Path) -> None:
    start, grads = _random(11), _grad_sequence(11)
    uninterrupted, _ = _run_ours(spec, start, grads)

    halfway, state = _run_ours(spec, start, grads[:4])
    save_file(state, str(tmp_path / "state.safetensors"))
    del state  # the crash
    loaded = load_file(str(tmp_path / "state.safetensors"))
    assert loaded[STEP_KEY].dtype == torch.int64
    assert loaded[STEP_KEY].shape == ()
    assert int(loaded[STEP_KEY]) == 4
    resumed, _ = _run_ours(spec, halfway, grads[4:], state=loaded)

    for name in SHAPES:
        assert torch.equal(resumed[name], uninterrupted[name])


def test_state_names_are_flat_per_parameter_slots() -> None:
    _, adam_state = _run_ours(OptimizerSpec(kind="adam"), _random(0), _grad_sequence(0, steps=1))
    _, sgd_state = _run_ours(OptimizerSpec(kind="sgd", momentum=0.5), _random(0), _grad_sequence(0, steps=1))
    assert set(adam_state) == {STEP_KEY} | {f"{n}::{s}" for n in SHAPES for s in ("exp_avg", "exp_avg_sq")}
    assert set(sgd_state) == {STEP_KEY} | {f"{n}::momentum" for n in SHAPES}


def test_step_leaves_params_and_grads_untouched() -> None:
    params, grads = _random(1), _random(2)
    before = {name: (params[name].clone(), grads[name].clone()) for name in SHAPES}
    spec = OptimizerSpec(kind="sgd", lr=0.1, momentum=0.9, weight_decay=0.1, max_grad_norm=0.1)
    for _ in range(2):
        optimizer_step(spec, params, grads, {})
    for name, (param, grad) in before.items():
        assert torch.equal(params[name], param)
        assert torch.equal(grads[name], grad)


@FAST
@given(max_norm=st.floats(1e-3, 100.0), scale=st.floats(1e-3, 1e3), seed=seeds)
def test_clip_grad_norm_equals_torch(max_norm: float, scale: float, seed: int) -> None:
    grads = _random(seed, scale)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in SHAPES.values()]
    for param, grad in zip(params, grads.values(), strict=True):
        param.grad = grad.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)

    clipped, total_norm = clip_grad_norm(grads, max_norm)

    torch.testing.assert_close(total_norm, expected_norm)
    for param, name in zip(params, SHAPES, strict=True):
        assert param.grad is not None
        torch.testing.assert_close(clipped[name], param.grad)
    assert math.sqrt(sum(float(g.square().sum()) for g in clipped.values())) <= max_norm * (1 + 1e-5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_non_finite_gradient_is_rejected_and_state_kept(kind: OptimizerKind, bad: float) -> None:
    momentum = 0.9 if kind == "sgd" else 0.0
    spec = OptimizerSpec(kind=kind, momentum=momentum, max_grad_norm=1.0)
    params, state = _run_ours(spec, _random(5), _grad_sequence(5, steps=2))
    snapshot = {key: value.clone() for key, value in state.items()}
    grads = _random(6)
    grads["norm.bias"][3] = bad

    with pytest.raises(InvalidInput, match=r"norm\.bias"):
        optimizer_step(spec, params, grads, state)

    assert state.keys() == snapshot.keys()
    assert all(torch.equal(state[key], snapshot[key]) for key in snapshot)


def _drop(tensors: Tensors, name: str) -> Tensors:
    return {key: value for key, value in tensors.items() if key != name}


@pytest.mark.parametrize(
    ("grads", "message"),
    [
        (_drop(_random(1), "norm.bias"), "no gradient"),
        ({**_random(1), "extra": torch.zeros(2)}, "unknown parameters"),
        ({**_random(1), "norm.bias": torch.zeros(4)}, "shape"),
        ({**_random(1), "norm.bias": torch.zeros(5, dtype=torch.int64)}, "not a float"),
    ],
    ids=["missing", "unknown", "shape", "dtype"],
)
def test_mismatched_gradients_are_rejected_and_state_kept(grads: Tensors, message: str) -> None:
    spec = OptimizerSpec(kind="adam")
    params, state = _run_ours(spec, _random(0), _grad_sequence(0, steps=1))
    snapshot = {key: value.clone() for key, value in state.items()}
    with pytest.raises(InvalidInput, match=message):
        optimizer_step(spec, params, grads, state)
    assert all(torch.equal(state[key], snapshot[key]) for key in snapshot)


def test_state_from_another_model_is_rejected() -> None:
    state = {STEP_KEY: torch.tensor(3), "norm.bias::exp_avg": torch.zeros(7)}
    with pytest.raises(InvalidInput, match=r"norm\.bias::exp_avg"):
        optimizer_step(OptimizerSpec(kind="adam"), _random(0), _random(1), state)
    assert int(state[STEP_KEY]) == 3


@pytest.mark.parametrize(
    "step", [torch.tensor(1.0), torch.tensor([1, 2]), torch.tensor(-1)], ids=["float", "vector", "negative"]
)
def test_corrupt_step_counter_is_rejected(step: Tensor) -> None:
    with pytest.raises(InvalidInput, match="::step"):
        optimizer_step(OptimizerSpec(kind="sgd"), _random(0), _random(1), {STEP_KEY: step})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "rmsprop"},
        {"lr": -0.1},
        {"lr": math.nan},
        {"lr": "0.1"},
        {"weight_decay": -1.0},
        {"max_grad_norm": 0.0},
        {"max_grad_norm": math.inf},
        {"kind": "sgd", "momentum": 1.0},
        {"kind": "sgd", "momentum": -0.1},
        {"kind": "sgd", "nesterov": True},
        {"kind": "adam", "momentum": 0.9},
        {"kind": "adam", "betas": (0.9, 1.0)},
        {"kind": "adam", "betas": (0.9,)},
        {"kind": "adamw", "eps": -1e-8},
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        OptimizerSpec(**kwargs)  # type: ignore[arg-type]


def test_betas_from_json_lists_become_a_tuple() -> None:
    spec = OptimizerSpec(kind="adam", betas=[0.8, 0.99])  # type: ignore[arg-type]
    assert spec.betas == (0.8, 0.99)
    assert hash(spec) == hash(OptimizerSpec(kind="adam", betas=(0.8, 0.99)))
