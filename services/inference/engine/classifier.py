"""Zero-shot classification by likelihood: which label does the model find most probable after the prompt.

Each label is scored by the sum of its tokens' log-probabilities following the formatted prompt; a softmax
over the labels turns the scores into probabilities. All prompt x label pairs run as one padded forward pass.

A template's fixed start is the same for every prompt: given its keys and values (`template_prefix`, computed
once by the caller and kept while the weights stay), each pass runs only the tokens after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llmk.errors import InvalidInput
from services.inference.engine.attention import Prefix
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
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True).to(device)
    lengths = torch.tensor([len(r) for r in rows], device=device)
    mask = (torch.arange(ids.shape[1], device=device) < lengths[:, None]).long()
    return ids, mask


def template_prefix(model: Model, tokenizer: Any, template: str) -> Prefix | None:
    """Keys and values of the template's text before {prompt}, minus its last token, which may merge with
    the prompt's first characters; None when that leaves nothing worth caching."""
    head = template.split("{prompt}", 1)[0]
    tokens = list(tokenizer.encode(head))[:-1] if head else []
    if len(tokens) < 2:
        return None
    with torch.no_grad():
        return model.encode_prefix(tokens)


def _after(prefix: Prefix | None, contexts: list[list[int]]) -> list[list[int]] | None:
    """Each context's tokens after the prefix, or None unless every context starts with it and goes on."""
    if prefix is None:
        return None
    n = prefix.length
    if any(len(c) <= n or c[:n] != prefix.tokens for c in contexts):
        return None
    return [c[n:] for c in contexts]


def label_scores(
    model: Model, contexts: list[list[int]], label_ids: list[list[int]], prefix: Prefix | None = None
) -> Tensor:
    """Sum of log-probabilities of each label's tokens after each context: [P, L]."""
    single = all(len(lab) == 1 for lab in label_ids)
    longest = max(len(c) for c in contexts) + (0 if single else max(len(lab) for lab in label_ids))
    if longest > model.config.max_positions:
        raise InvalidInput(f"a prompt with its label exceeds {model.config.max_positions} tokens")
    rests = _after(prefix, contexts)
    if rests is None:
        prefix = None
    else:
        contexts = rests
    if single:
        return _next_token_scores(model, contexts, [lab[0] for lab in label_ids], prefix)
    rows = [c + lab for c in contexts for lab in label_ids]
    device = model.lm_head.weight.device
    ids, mask = _pad(rows, device)
    # Only the positions that predict a label token go through the vocabulary projection.
    row_idx: list[int] = []
    pos_idx: list[int] = []
    for r, (c, lab) in enumerate((c, lab) for c in contexts for lab in label_ids):
        row_idx += [r] * len(lab)
        pos_idx += range(len(c) - 1, len(c) + len(lab) - 1)
    rows_t, pos_t = torch.tensor(row_idx, device=device), torch.tensor(pos_idx, device=device)
    hidden = model.features(ids, mask, prefix)  # [N, T, D]
    logits = model.lm_head(hidden[rows_t, pos_t]).float()  # [M, V]
    targets = ids[rows_t, pos_t + 1]  # [M]
    logp = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]  # [M]
    scores = torch.zeros(len(rows), device=device).index_add_(0, rows_t, logp)  # [N]
    return scores.view(len(contexts), len(label_ids))


def _next_token_scores(
    model: Model, contexts: list[list[int]], tokens: list[int], prefix: Prefix | None
) -> Tensor:
    """Single-token labels are all read off one pass over the prompts, not one pass per label."""
    device = model.lm_head.weight.device
    ids, mask = _pad(contexts, device)
    last = torch.tensor([len(c) - 1 for c in contexts], device=device)
    hidden = model.features(ids, mask, prefix)  # [P, T, D]
    logits = model.lm_head(hidden[torch.arange(len(contexts), device=device), last]).float()  # [P, V]
    return logits.log_softmax(-1)[:, torch.tensor(tokens, device=device)]  # [P, L]


def classify(
    model: Model,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    template: str = "{prompt}",
    separator: str = " ",
    prefix: Prefix | None = None,
) -> list[dict[str, float]]:
    """For each prompt, the probability of each label; the label text follows `separator` after the prompt.

    `prefix` is `template_prefix(model, tokenizer, template)` for the model's current weights, or None."""
    validate(prompts, labels, template)
    contexts = [list(tokenizer.encode(template.replace("{prompt}", p))) for p in prompts]
    label_ids = [list(tokenizer.encode(separator + lab, add_special_tokens=False)) for lab in labels]
    if not all(contexts) or not all(label_ids):
        raise InvalidInput("a prompt or a label encodes to no tokens")
    with torch.no_grad():
        probs = label_scores(model, contexts, label_ids, prefix).softmax(-1).tolist()
    return [dict(zip(labels, row, strict=True)) for row in probs]
