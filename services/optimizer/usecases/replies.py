"""Learning replies from thumbs: an unpaired, KTO-style objective against the version the job started from.

Each example is a conversation, the reply a version wrote (or an agent's correction of it) and a rating.
The log-ratio r = log p(reply | conversation) - log p_ref(reply | conversation), summed over the reply's
tokens, compares the trained model to the reference (the version the job's session loaded: the one that
produced the replies, or its nearest served descendant). The KL baseline z is the mean log-ratio of
mismatched pairs in the batch (conversation i with reply i+1), clamped at 0 and held constant, so a reply
is only pushed against how far the model drifted overall: up-rated replies (and corrections) by
1 - sigmoid(beta (r - z)), down-rated ones by 1 - sigmoid(beta (z - r)). The held-out metric is the mean
log-probability per token of up-rated held-out replies (higher is better), so the job gate reads it as is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from llmk.errors import InvalidInput
from services.optimizer.interface import DOWN, UP, Example
from services.optimizer.usecases.causal_lm import (
    HfTokenizer,
    Tokenizer,
    TrainableModel,
    build_model,
    load_tokenizer,
)

if TYPE_CHECKING:
    from services.optimizer.usecases.jobs import ParameterStore

BETA = 0.1  # TRL's KTO default: how sharply the loss saturates in the log-ratio
EVAL_BATCH = 16
ROLES = ("system", "user", "assistant")
BYTE_TURN = "{role}: {content}\n"  # the inference tier's format for models without a chat template


def turns(example: Example, i: int = 0) -> list[dict[str, str]]:
    """The conversation an example's reply answers, checked: JSON turns with known roles, a user turn last."""
    try:
        found = json.loads(example.prompt)
    except ValueError:
        raise InvalidInput(f"example {i}: prompt must be the conversation as JSON turns") from None
    if not isinstance(found, list) or not found:
        raise InvalidInput(f"example {i}: the conversation must be a non-empty list of turns")
    for turn in found:
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            raise InvalidInput(f"example {i}: each turn is an object with exactly role and content")
        if turn["role"] not in ROLES or not isinstance(turn["content"], str) or not turn["content"].strip():
            raise InvalidInput(f"example {i}: a turn needs a role in {ROLES} and non-empty content")
    if found[-1]["role"] != "user":
        raise InvalidInput(f"example {i}: the conversation must end with the customer's (user) turn")
    return found


def check_replies(examples: Sequence[Example], limit: int) -> None:
    """Reject a submission that is empty, too large, or has an example that is not a rated reply."""
    if not examples:
        raise InvalidInput("empty batch: a submission needs at least one example")
    if len(examples) > limit:
        raise InvalidInput(f"{len(examples)} examples in one submission; the limit is {limit}")
    for i, example in enumerate(examples):
        turns(example, i)
        if not example.completion.strip():
            raise InvalidInput(f"example {i} has an empty reply")
        if example.rating not in (UP, DOWN):
            raise InvalidInput(f"example {i}: rating must be {UP!r} or {DOWN!r}, got {example.rating!r}")


class ReplyTrainer(TrainableModel):
    """A model and its tokenizer; only the tensors named trainable get gradients; the reference is the
    values they had when the trainer was made."""

    def __init__(self, model: Any, tokenizer: Tokenizer, trainable: Sequence[str], beta: float = BETA):
        super().__init__(model, tokenizer, trainable)
        self.beta = beta
        self.reference = {name: p.detach().clone() for name, p in self.params.items()}
        self._ref: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}

    def evaluate(self, examples: Sequence[Example]) -> float:
        """Mean log-probability per token of the up-rated replies (corrections are up-rated)."""
        wanted = [e for e in examples if e.rating == UP]
        if not wanted:
            raise InvalidInput("held-out reply examples need at least one up-rated reply")
        total, tokens = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(wanted), EVAL_BATCH):
                chunk = wanted[i : i + EVAL_BATCH]
                replies = [self._encode(e.completion) for e in chunk]
                total += float(self.scorer.logprobs([self.prompt(e) for e in chunk], replies).sum())
                tokens += sum(len(r) for r in replies)
        return total / tokens

    def _loss(self, batch: Sequence[Example]) -> Tensor:
        if not batch:
            raise InvalidInput("empty batch: nothing to train on")
        n = len(batch)
        prompts = [self.prompt(e) for e in batch]
        replies = [self._encode(e.completion) for e in batch]
        mismatched = replies[1:] + replies[:1]  # conversation i, reply i+1: what the model says off-topic
        contexts, targets = prompts + prompts, replies + mismatched
        reference = self._reference(contexts, targets)  # first: it swaps the parameters' values in place
        ratio = self.scorer.logprobs(contexts, targets) - reference
        chosen, drift = ratio[:n], ratio[n:]
        baseline = drift.mean().clamp(min=0).detach()
        up = torch.tensor([e.rating == UP for e in batch])
        margin = torch.where(up, chosen - baseline, baseline - chosen)
        return (1 - torch.sigmoid(self.beta * margin)).mean()

    def _reference(self, contexts: list[list[int]], targets: list[list[int]]) -> Tensor:
        """log p_ref(target | context) for each pair, from the reference values (kept per pair)."""
        keys = [(tuple(c), tuple(t)) for c, t in zip(contexts, targets, strict=True)]
        missing = [k for k in dict.fromkeys(keys) if k not in self._ref]
        if missing:
            current = {n: v.clone() for n, v in self.values().items()}
            self.set_values(self.reference)
            try:
                with torch.no_grad():
                    found = self.scorer.logprobs([list(c) for c, _ in missing], [list(t) for _, t in missing])
            finally:
                self.set_values(current)
            self._ref.update(zip(missing, found.tolist(), strict=True))
        return torch.tensor([self._ref[k] for k in keys])

    def prompt(self, example: Example) -> list[int]:
        """The conversation as the served model sees it: its chat template, then the assistant's cue."""
        conversation = turns(example)
        hf: Any = self.tokenizer.tokenizer if isinstance(self.tokenizer, HfTokenizer) else None
        if hf is not None and getattr(hf, "chat_template", None):
            text = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(BYTE_TURN.format(**t) for t in conversation) + "assistant: "
        return self._encode(text)

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if not ids:
            raise InvalidInput(f"{text[:40]!r} encodes to no tokens")
        return ids


def load_reply_trainer(
    store: ParameterStore, model: str, ref: str, trainable: Sequence[str] = ()
) -> ReplyTrainer:
    """A stored version, ready to learn replies on `trainable` (and be their reference)."""
    record = store.model(model)
    files = {name: store.file(model, name) for name in record.files}
    network = build_model(record.config, store.fetch(model, ref))
    tokenizer = load_tokenizer(files, int(record.config.get("vocab_size", 0)))
    return ReplyTrainer(network, tokenizer, trainable)
