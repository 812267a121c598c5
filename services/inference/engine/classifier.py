"""Zero-shot classification by likelihood: which label does the model find most probable after the prompt.

Each label is scored by the sum of its tokens' log-probabilities following the formatted prompt; a softmax
over the labels turns the scores into probabilities. All prompt x label pairs run as one padded forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llmk.errors import InvalidInput
from services.inference.engine.model import Model


def validate(prompts: Sequence[str], labels: Sequence[str], template: str) -> None:
    """Refuse a request before it joins a batch, where it would fail its batch-mates too."""
    if not prompts:
        raise InvalidInput("no prompts to classify")
    if not labels or len(set(labels)) != len(labels):
        raise InvalidInput(f"labels must be distinct and at least one, got {list(labels)}")
    if "{prompt}" not in template:
        raise InvalidInput("the template must contain {prompt}")


def _pad(rows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Right-pad token rows into input_ids and attention_mask [N, T]."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def label_scores(model: Model, contexts: list[list[int]], label_ids: list[list[int]]) -> Tensor:
    """Sum of log-probabilities of each label's tokens after each context: [P, L]."""
    if all(len(lab) == 1 for lab in label_ids):
        return _next_token_scores(model, contexts, [lab[0] for lab in label_ids])
    rows = [c + lab for c in contexts for lab in label_ids]
    if max(len(r) for r in rows) > model.config.max_positions:
        raise InvalidInput(f"a prompt with its label exceeds {model.config.max_positions} tokens")
    device = model.lm_head.weight.device
    ids, mask = _pad(rows, device)
    # Only the positions that predict a label token go through the vocabulary projection.
    row_idx: list[int] = []
    pos_idx: list[int] = []
    for r, (c, lab) in enumerate((c, lab) for c in contexts for lab in label_ids):
        row_idx += [r] * len(lab)
        pos_idx += range(len(c) - 1, len(c) + len(lab) - 1)
    rows_t, pos_t = torch.tensor(row_idx, device=device), torch.tensor(pos_idx, device=device)
    hidden = model.features(ids, mask)  # [N, T, D]
    logits = model.lm_head(hidden[rows_t, pos_t]).float()  # [M, V]
    targets = ids[rows_t, pos_t + 1]  # [M]
    logp = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]  # [M]
    scores = torch.zeros(len(rows), device=device).index_add_(0, rows_t, logp)  # [N]
    return scores.view(len(contexts), len(label_ids))


def _next_token_scores(model: Model, contexts: list[list[int]], tokens: list[int]) -> Tensor:
    """Single-token labels are all read off one pass over the prompts, not one pass per label."""
    if max(len(c) for c in contexts) > model.config.max_positions:
        raise InvalidInput(f"a prompt exceeds {model.config.max_positions} tokens")
    device = model.lm_head.weight.device
    ids, mask = _pad(contexts, device)
    last = torch.tensor([len(c) - 1 for c in contexts], device=device)
    hidden = model.features(ids, mask)  # [P, T, D]
    logits = model.lm_head(hidden[torch.arange(len(contexts), device=device), last]).float()  # [P, V]
    return logits.log_softmax(-1)[:, torch.tensor(tokens, device=device)]  # [P, L]


def classify(
    model: Model,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    template: str = "{prompt}",
    separator: str = " ",
) -> list[dict[str, float]]:
    """For each prompt, the probability of each label; the label text follows `separator` after the prompt."""
    validate(prompts, labels, template)
    contexts = [list(tokenizer.encode(template.replace("{prompt}", p))) for p in prompts]
    label_ids = [list(tokenizer.encode(separator + lab, add_special_tokens=False)) for lab in labels]
    if not all(contexts) or not all(label_ids):
        raise InvalidInput("a prompt or a label encodes to no tokens")
    with torch.no_grad():
        probs = label_scores(model, contexts, label_ids).softmax(-1).tolist()
    return [dict(zip(labels, row, strict=True)) for row in probs]
