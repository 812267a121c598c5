"""Cold start: item rows placed from what the served LLM reads in an item's title, genres and tags.

Each item's text is classified by the LLM (the inference tier's public `classify`, so any served model,
in this process or over gRPC, computes it) against a fixed list of descriptors; the log-probabilities over
those descriptors are the item's content vector, computed once. A ridge regression from content vectors to
the trained rows (embedding and bias) of items that have ratings then places every catalog item that has
none: such an item gets a row at creation, so it can be recommended before anyone has rated it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from llmk.errors import InvalidInput
from services.rec.usecases.model import ITEM_BIAS, ITEM_EMBEDDING, ITEM_IDS, Tables

if TYPE_CHECKING:
    from services.inference.interface import InferenceClient

# single words (the classifier puts a space before each), so each is one next-token probability
DESCRIPTORS = (
    "action", "adventure", "animation", "children", "comedy", "crime", "documentary", "drama", "fantasy",
    "horror", "music", "mystery", "romance", "science", "suspense", "war", "western", "love", "family",
    "history", "space", "magic", "murder", "school", "sports", "politics", "superhero", "classic",
)  # fmt: skip
TEMPLATE = "Movie: {text}\nIn one word, this movie is about"
RIDGE = 1.0


def vectors(llm: InferenceClient, texts: Mapping[int, str], batch: int = 16) -> dict[int, Tensor]:
    """item -> log-probabilities of DESCRIPTORS given the item's text, as the served LLM scores them."""
    items = sorted(texts)
    found: dict[int, Tensor] = {}
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        answer = llm.classify([texts[i] for i in chunk], list(DESCRIPTORS), TEMPLATE)
        for item, scores in zip(chunk, answer.results, strict=True):
            probs = torch.tensor([scores.probabilities[d] for d in DESCRIPTORS])
            found[item] = probs.clamp_min(1e-9).log()
    return found


def place_cold_items(tables: Tables, content: Mapping[int, Tensor], catalog: Sequence[int]) -> list[int]:
    """Give each item of `catalog` that has no row yet a row placed from its content; the items placed.

    The map from content to rows is fitted on the items that have both a trained row and a content vector."""
    warm = [i for i in tables.items.of if i in content]
    cold = [i for i in catalog if i not in tables.items.of and i in content]
    if not cold:
        return []
    if len(warm) < 2:
        raise InvalidInput("content vectors need at least 2 trained items to learn from")
    free = tables.items.capacity - len(tables.items)
    if len(cold) > free:
        raise InvalidInput(f"{len(cold)} new catalog items do not fit the {free} spare item rows")
    rows = torch.tensor([tables.items.of[i] for i in warm])
    targets = torch.cat([tables.t[ITEM_EMBEDDING][rows], tables.t[ITEM_BIAS][rows, None]], dim=1)  # [W, D+1]
    weights, mean, scale = _ridge(torch.stack([content[i] for i in warm]), targets)
    placed = _features(torch.stack([content[i] for i in cold]), mean, scale) @ weights  # [C, D+1]
    for item, value in zip(cold, placed, strict=True):
        row = tables.item_row(item)
        tables.t[ITEM_EMBEDDING][row] = value[:-1]
        tables.t[ITEM_BIAS][row] = value[-1]
    tables.touch((ITEM_EMBEDDING, ITEM_BIAS, ITEM_IDS), [tables.items.of[i] for i in cold])
    return cold


def _features(x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """Standardised content with a constant column (the intercept)."""
    z = (x - mean) / scale
    return torch.cat([z, torch.ones(z.shape[0], 1)], dim=1)


def _ridge(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Weights [F+1, T] minimising |features(x) W - y|^2 + RIDGE |W|^2 (float64 for a stable solve)."""
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    f = _features(x, mean, scale).double()
    gram = f.T @ f + RIDGE * torch.eye(f.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(gram, f.T @ y.double())
    return weights.float(), mean, scale
