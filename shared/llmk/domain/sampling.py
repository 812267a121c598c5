"""The sampling parameters every way of asking for text must respect, checked where a request enters."""

from __future__ import annotations

import math

from llmk.errors import InvalidInput

# Logits divided by a tiny temperature overflow to inf and leave no probabilities (1e-45 did); 1e-3 is
# nearly greedy already and far from that edge.
MIN_TEMPERATURE = 1e-3


def check_sampling(temperature: float, top_p: float = 1.0, top_k: int = 0) -> None:
    """InvalidInput unless every sampling parameter is finite and in range: one request's NaN must never
    reach a decode step it shares with others."""
    if not (temperature == 0 or (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE)):
        raise InvalidInput(
            f"temperature must be 0 (greedy) or a number from {MIN_TEMPERATURE}, got {temperature}"
        )
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidInput(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise InvalidInput(f"top_k must be >= 0 (0 keeps every token), got {top_k}")
