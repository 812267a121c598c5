"""Next-token selection: greedy at temperature 0, otherwise temperature, top-k and top-p sampling.

Each request draws from its own torch.Generator seeded from the request's seed, so a seeded request gets
the same tokens whichever other requests share its batch.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from llmk.domain.sampling import check_sampling


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0
    seed: int | None = None  # None: a fresh random seed

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_p, self.top_k)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_rng(params: SamplingParams, device: Any) -> torch.Generator | None:
    """The request's own random stream; greedy requests need none."""
    if params.greedy:
        return None
    rng = torch.Generator(device=device)
    rng.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
    return rng


def filter_logits(logits: Tensor, params: SamplingParams) -> Tensor:
    """Scale by temperature, then drop tokens outside the top-k and the top-p nucleus (HF's order)."""
    # logits: [V]
    logits = logits.float() / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already reach top_p; the best token always stays.
        drop = (cumulative - sorted_logits.softmax(-1)) >= params.top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def sample(logits: Tensor, params: SamplingParams, rng: torch.Generator | None) -> int:
    """One token id from next-token logits [V]."""
    if params.greedy:
        return int(logits.argmax())
    probs = filter_logits(logits, params).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=rng))


def sample_batch(
    logits: Tensor, params: Sequence[SamplingParams], rngs: Sequence[torch.Generator | None]
) -> list[int]:
    """One token per row of logits [B, V]; greedy rows share one argmax, sampled rows use their own stream."""
    chosen = logits.argmax(-1).tolist()
    for row, (p, rng) in enumerate(zip(params, rngs, strict=True)):
        if not p.greedy:
            chosen[row] = sample(logits[row], p, rng)
    return chosen
