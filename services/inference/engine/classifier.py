"""Zero-shot classification by likelihood: which label does the model find most probable after the prompt.

Each label is scored by the sum of its tokens' log-probabilities following the formatted prompt; a softmax
over the labels turns the scores into probabilities. Single-token labels are read off one pass over the
prompts; multi-token labels continue each prompt's keys and values, computed once per prompt, in one row
shaped as a tree of the labels' tokens (a start several labels share runs once), so 77 labels cost one
prompt pass and one short row, not 77 full rows.

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
    if not single:  # each prompt becomes a prefix of its own, so the template's is not needed
        return torch.stack([_labels_after(model, c, label_ids) for c in contexts])
    rests = _after(prefix, contexts)
    if rests is None:
        prefix = None
    else:
        contexts = rests
    return _next_token_scores(model, contexts, [lab[0] for lab in label_ids], prefix)


def _labels_after(model: Model, context: list[int], label_ids: list[list[int]]) -> Tensor:
    """Multi-token labels after one prompt: the prompt's keys and values are computed once, then every label
    continues them in one tree-shaped row (the prompt's last token, then each distinct label start once)."""
    device = model.lm_head.weight.device
    shared = model.encode_prefix(context[:-1]) if len(context) > 1 else None
    starts = list(dict.fromkeys(tuple(lab[:k]) for lab in label_ids for k in range(len(lab))))  # () first
    index = {start: i for i, start in enumerate(starts)}
    tokens = [context[-1]] + [start[-1] for start in starts[1:]]
    allowed = torch.tensor([[a[: len(b)] == b for b in starts] for a in starts], device=device)  # [N, N]
    hidden = model.tree_features(tokens, [len(start) for start in starts], allowed, shared)  # [N, D]
    logp = model.lm_head(hidden).float().log_softmax(-1)  # [N, V]: node i predicts what follows it
    node_idx: list[int] = []
    token_idx: list[int] = []
    label_idx: list[int] = []
    for r, lab in enumerate(label_ids):
        node_idx += [index[tuple(lab[:k])] for k in range(len(lab))]
        token_idx += lab
        label_idx += [r] * len(lab)
    picked = logp[torch.tensor(node_idx, device=device), torch.tensor(token_idx, device=device)]  # [M]
    return torch.zeros(len(label_ids), device=device).index_add_(
        0, torch.tensor(label_idx, device=device), picked
    )


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


def token_logprobs(model: Model, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1: how likely the model finds each token of a text after the ones
    before it (the first token has no context and no score)."""
    if len(ids) > model.config.max_positions:
        raise InvalidInput(
            f"the text has {len(ids)} tokens; the model reads at most {model.config.max_positions}"
        )
    device = model.lm_head.weight.device
    tokens = torch.tensor([ids], device=device)
    with torch.no_grad():
        logp = model.lm_head(model.features(tokens)[0, :-1]).float().log_softmax(-1)  # [T - 1, V]
    return logp.gather(-1, tokens[0, 1:, None])[:, 0].tolist()
