"""Optimizer math as pure functions over named tensors.

A job keeps its optimizer state as a flat ``dict[str, Tensor]`` (``"NAME::exp_avg"``, ``"::step"``, ...)
rather than inside a ``torch.optim.Optimizer``, so the whole state saves to one safetensors file and a crashed
job resumes with bit-identical results. The arithmetic follows torch.optim's single-tensor code paths op
for op, always in fp32, so a job that switches between this module and torch.optim sees the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from llmk.errors import InvalidInput

OptimizerKind = Literal["sgd", "adam", "adamw"]
KINDS: tuple[str, ...] = ("sgd", "adam", "adamw")
SEPARATOR = "::"
STEP_KEY = "::step"
SLOTS: tuple[str, ...] = ("momentum", "exp_avg", "exp_avg_sq")


def state_key(name: str, slot: str) -> str:
    """The flat state-dict key of one per-parameter buffer, e.g. ``"layer.weight::exp_avg"``."""
    return f"{name}{SEPARATOR}{slot}"


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidInput(message)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class OptimizerSpec:
    """Hyperparameters of one optimizer; validated on construction so a bad job fails before its first step.

    ``momentum`` and ``nesterov`` apply to SGD only; ``betas`` and ``eps`` to Adam and AdamW only.
    ``weight_decay`` is an L2 term added to the gradient for SGD and Adam, and decoupled (applied to the
    parameter) for AdamW.
    ``max_grad_norm`` clips the global gradient norm before the step; ``None`` disables clipping.
    """

    kind: OptimizerKind = "adamw"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        _require(self.kind in KINDS, f"optimizer kind must be one of {KINDS}, got {self.kind!r}")
        _require(_is_real(self.lr) and self.lr >= 0, f"lr must be a finite number >= 0, got {self.lr!r}")
        _require(
            _is_real(self.weight_decay) and self.weight_decay >= 0,
            f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}",
        )
        _require(
            self.max_grad_norm is None or (_is_real(self.max_grad_norm) and self.max_grad_norm > 0),
            f"max_grad_norm must be None or a finite number > 0, got {self.max_grad_norm!r}",
        )
        self._check_momentum()
        self._check_adam_terms()

    def _check_momentum(self) -> None:
        _require(
            _is_real(self.momentum) and 0 <= self.momentum < 1,
            f"momentum must be in [0, 1), got {self.momentum!r}",
        )
        _require(not self.nesterov or self.momentum > 0, "nesterov momentum needs momentum > 0")
        _require(
            self.kind == "sgd" or (self.momentum == 0 and not self.nesterov),
            f"momentum and nesterov apply to sgd only; {self.kind} uses betas",
        )

    def _check_adam_terms(self) -> None:
        betas = self.betas
        _require(
            isinstance(betas, tuple | list) and len(betas) == 2,
            f"betas must be a pair of numbers, got {betas!r}",
        )
        _require(
            all(_is_real(beta) and 0 <= beta < 1 for beta in betas),
            f"each of betas must be in [0, 1), got {betas!r}",
        )
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        _require(_is_real(self.eps) and self.eps >= 0, f"eps must be a finite number >= 0, got {self.eps!r}")


def clip_grad_norm(grads: Mapping[str, Tensor], max_norm: float) -> tuple[dict[str, Tensor], Tensor]:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``, as clip_grad_norm_ does.

    Returns the clipped gradients (new fp32 tensors; the inputs are untouched) and the norm before clipping.
    Non-finite gradients give a non-finite norm, as in torch; ``optimizer_step`` rejects them before clipping.
    """
    _require(_is_real(max_norm) and max_norm > 0, f"max_norm must be a finite number > 0, got {max_norm!r}")
    if not grads:
        return {}, torch.tensor(0.0)
    grads32 = {name: grad.float() for name, grad in grads.items()}
    norms = [torch.linalg.vector_norm(grad, 2.0) for grad in grads32.values()]
    total_norm = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    # Multiplying by the clamped coefficient even when it is 1 keeps the result bitwise equal to torch's.
    coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    return {name: grad.mul(coef) for name, grad in grads32.items()}, total_norm


def optimizer_step(
    spec: OptimizerSpec,
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor],
    state: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Advance the optimizer one step and return each parameter's fp32 update ``new_param - param``.

    ``params`` are only read; the caller decides how (and whether, e.g. after sparsifying) to apply the
    update. ``state`` is updated in place, and only after every input was validated and every update computed,
    so an error leaves it exactly as it was. ``grads`` must name exactly the tensors in ``params``: the step
    counter is shared, so a parameter that skipped a step would get the wrong bias correction.
    """
    _check_inputs(params, grads)
    grads32 = {name: grad.float() for name, grad in grads.items()}
    if spec.max_grad_norm is not None:
        grads32, _ = clip_grad_norm(grads32, spec.max_grad_norm)
    step = _read_step(state) + 1
    updates: dict[str, Tensor] = {STEP_KEY: torch.tensor(step, dtype=torch.int64)}
    deltas: dict[str, Tensor] = {}
    for name, param in params.items():
        p = param.float()
        slots = _read_slots(state, name, p)
        new_p, new_slots = _STEPPERS[spec.kind](spec, p, grads32[name], slots, step)
        deltas[name] = new_p - p
        updates.update({state_key(name, slot): value for slot, value in new_slots.items()})
    state.update(updates)
    return deltas


def _check_inputs(params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> None:
    missing, unexpected = sorted(set(params) - set(grads)), sorted(set(grads) - set(params))
    _require(not missing, f"no gradient for parameters {missing}")
    _require(not unexpected, f"gradients for unknown parameters {unexpected}")
    for name, param in params.items():
        grad = grads[name]
        _require(bool(name) and SEPARATOR not in name, f"parameter name {name!r} is empty or contains '::'")
        _require(param.is_floating_point(), f"parameter {name!r} is {param.dtype}, not a float tensor")
        _require(grad.is_floating_point(), f"gradient {name!r} is {grad.dtype}, not a float tensor")
        _require(
            grad.shape == param.shape,
            f"gradient {name!r} has shape {tuple(grad.shape)}, parameter has {tuple(param.shape)}",
        )
        _require(bool(torch.isfinite(grad).all()), f"gradient {name!r} contains NaN or Inf")


def _read_step(state: Mapping[str, Tensor]) -> int:
    counter = state.get(STEP_KEY)
    if counter is None:
        return 0
    _require(
        counter.dtype == torch.int64 and counter.numel() == 1,
        f"state {STEP_KEY!r} must be one int64 value, got {counter.dtype} of shape {tuple(counter.shape)}",
    )
    step = int(counter.item())
    _require(step >= 0, f"state {STEP_KEY!r} is negative ({step})")
    return step


def _read_slots(state: Mapping[str, Tensor], name: str, param: Tensor) -> dict[str, Tensor]:
    """The parameter's buffers as fp32, checked against its shape so a mismatched resume fails loudly."""
    slots: dict[str, Tensor] = {}
    for slot in SLOTS:
        value = state.get(state_key(name, slot))
        if value is not None:
            _require(
                value.shape == param.shape,
                f"state {state_key(name, slot)!r} has shape {tuple(value.shape)}, "
                f"parameter has {tuple(param.shape)}",
            )
            slots[slot] = value.float()
    return slots


Slots = dict[str, Tensor]
Stepper = Callable[[OptimizerSpec, Tensor, Tensor, Slots, int], tuple[Tensor, Slots]]


def _sgd(spec: OptimizerSpec, p: Tensor, grad: Tensor, slots: Slots, step: int) -> tuple[Tensor, Slots]:
    """torch.optim.SGD with dampening 0; ``step`` is unused because SGD has no bias correction."""
    if spec.weight_decay != 0:
        grad = grad.add(p, alpha=spec.weight_decay)
    new_slots: Slots = {}
    if spec.momentum != 0:
        buf = slots.get("momentum")
        buf = grad.clone() if buf is None else buf.mul(spec.momentum).add(grad)
        new_slots["momentum"] = buf
        grad = grad.add(buf, alpha=spec.momentum) if spec.nesterov else buf
    return p.add(grad, alpha=-spec.lr), new_slots


def _adam(spec: OptimizerSpec, p: Tensor, grad: Tensor, slots: Slots, step: int) -> tuple[Tensor, Slots]:
    """torch.optim.Adam (L2 weight decay) and AdamW (decoupled weight decay), without amsgrad."""
    beta1, beta2 = spec.betas
    base = p
    if spec.weight_decay != 0:
        if spec.kind == "adamw":
            base = p.mul(1 - spec.lr * spec.weight_decay)
        else:
            grad = grad.add(p, alpha=spec.weight_decay)
    exp_avg = slots.get("exp_avg", torch.zeros_like(p)).lerp(grad, 1 - beta1)
    exp_avg_sq = slots.get("exp_avg_sq", torch.zeros_like(p)).mul(beta2).addcmul(grad, grad, value=1 - beta2)
    step_size = spec.lr / (1 - beta1**step)
    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add(spec.eps)
    new_p = base.addcdiv(exp_avg, denom, value=-step_size)
    return new_p, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


_STEPPERS: dict[str, Stepper] = {"sgd": _sgd, "adam": _adam, "adamw": _adam}
