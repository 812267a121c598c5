"""Changing one named weight of a built model in place: the single door hot updates go through.

Load-time options (pruning, int8, offload) change how a weight is held; each registers how
its weights are replaced, so a hot update keeps the model's form.
"""

from __future__ import annotations

import torch
from torch import nn

from llmk.errors import InvalidDelta


def set_weight(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Copy `value` into the parameter `name` (a Hugging Face state-dict name)."""
    params = dict(model.named_parameters())
    if name not in params:
        if name == "lm_head.weight":  # tied to the embeddings: nothing separate to update
            return
        raise InvalidDelta(f"the served model has no parameter {name!r}")
    p = params[name]
    if tuple(p.shape) != tuple(value.shape):
        raise InvalidDelta(f"{name}: new shape {tuple(value.shape)} does not match served {tuple(p.shape)}")
    with torch.no_grad():
        p.copy_(value.to(device=p.device, dtype=p.dtype))
