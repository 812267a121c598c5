"""Changing one named weight of a built model in place: the single door hot updates go through.

Load-time options (pruning, int8, offload) change how a weight is held; each registers how its weights are
replaced, so a hot update keeps the model's form. Two kinds of rule, kept on the model:

- a form (compress.py): the new float value under its Hugging Face name becomes the tensors the module
  holds, e.g. re-pruned with the same rule, or re-quantized into int8 weights and scales;
- a placement (offload.py): tensors of offloaded layers live off the module between passes, so a write goes
  to their stored copy instead of the (released) module tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from llmk.errors import InvalidDelta

# A float value in its Hugging Face name's layout -> the module tensors it becomes, by state-dict key.
Convert = Callable[[Tensor], dict[str, Tensor]]

_RULES = "_llmk_weight_rules"


class Placement(Protocol):
    """Holds some of a model's tensors away from their modules (offloaded layers)."""

    def shape_of(self, key: str) -> tuple[int, ...] | None:
        """The held tensor's shape, or None when `key` is not held here."""

    def read(self, key: str) -> Tensor: ...

    def write(self, key: str, value: Tensor) -> None: ...


@dataclass(frozen=True)
class Form:
    shape: tuple[int, ...]  # what a new value must look like: the original weight's shape
    convert: Convert


@dataclass
class WeightRules:
    forms: dict[str, Form] = field(default_factory=dict)
    placement: Placement | None = None
    writes: int = 0  # values written through set_weight: what was computed from older weights is stale


def weight_rules(model: nn.Module) -> WeightRules:
    """The model's rules, created empty on first use (a plain model has none)."""
    rules = getattr(model, _RULES, None)
    if rules is None:
        rules = WeightRules()
        setattr(model, _RULES, rules)
    return rules


def register_form(model: nn.Module, name: str, convert: Convert) -> None:
    """From now on a new value for `name` goes through `convert`; a second form for the same name is applied
    to the first one's output for `name` (prune, then quantize)."""
    forms = weight_rules(model).forms
    prior = forms.get(name)
    if prior is None:
        forms[name] = Form(tuple(model.get_parameter(name).shape), convert)
        return

    def composed(value: Tensor) -> dict[str, Tensor]:
        return convert(prior.convert(value)[name])

    forms[name] = Form(prior.shape, composed)


def writes(model: nn.Module) -> int:
    """How many values set_weight has written to `model`: a cache of anything computed from the weights
    (a classify template's keys and values) is valid while this stays the same."""
    rules = getattr(model, _RULES, None)
    return rules.writes if rules is not None else 0


def set_weight(model: nn.Module, name: str, value: Tensor) -> None:
    """Replace the weight `name` (a Hugging Face state-dict name) with `value`, keeping the model's form.

    Everything is converted before anything is written, so a refused value leaves the model unchanged."""
    rules = weight_rules(model)
    form = rules.forms.get(name)
    shape = form.shape if form is not None else _stored_shape(model, rules, name)
    if shape is None:
        if name == "lm_head.weight":  # tied to the embeddings: nothing separate to update
            return
        raise InvalidDelta(f"the served model has no parameter {name!r}")
    if tuple(value.shape) != shape:
        raise InvalidDelta(f"{name}: new shape {tuple(value.shape)} does not match served {shape}")
    with torch.no_grad():
        tensors = form.convert(value) if form is not None else {name: value}
        rules.writes += 1
        for key, tensor in tensors.items():
            _write(model, rules, key, tensor)


def verify_weight(model: nn.Module, name: str, value: Tensor) -> None:
    """Raise InvalidDelta unless the model holds `value` under `name`, in its form: the check after a write.

    A pruned or int8 weight is compared with `value` converted by the same rule, an offloaded one where it is
    held; a 2:4 sparse CUDA weight, which cannot be read back cheaply, is not compared."""
    rules = getattr(model, _RULES, None) or WeightRules()
    form = rules.forms.get(name)
    if form is None and _stored_shape(model, rules, name) is None:
        return  # the head tied to the embeddings: set_weight wrote nothing
    for key, tensor in (form.convert(value) if form is not None else {name: value}).items():
        held = _read(model, rules, key)
        if type(held.data) is not Tensor or held.layout != torch.strided:
            continue
        if not torch.equal(held.detach(), tensor.to(device=held.device, dtype=held.dtype)):
            raise InvalidDelta(f"{name}: the served weight differs from the stored value after writing it")


def _stored_shape(model: nn.Module, rules: WeightRules, name: str) -> tuple[int, ...] | None:
    if rules.placement is not None and (shape := rules.placement.shape_of(name)) is not None:
        return shape
    params = dict(model.named_parameters())
    return tuple(params[name].shape) if name in params else None


def _read(model: nn.Module, rules: WeightRules, key: str) -> Tensor:
    if rules.placement is not None and rules.placement.shape_of(key) is not None:
        return rules.placement.read(key)
    owner_name, _, attr = key.rpartition(".")
    return getattr(model.get_submodule(owner_name), attr)


def _write(model: nn.Module, rules: WeightRules, key: str, value: Tensor) -> None:
    if rules.placement is not None and rules.placement.shape_of(key) is not None:
        rules.placement.write(key, value)
        return
    owner_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    live = getattr(owner, attr)
    if type(live.data) is Tensor and live.layout == torch.strided:
        live.copy_(value.to(device=live.device, dtype=live.dtype))
    else:  # a tensor subclass (a 2:4 sparse weight) cannot be written into: it is rebuilt by its form
        setattr(owner, attr, nn.Parameter(value, requires_grad=False))
