"""Learning from labelled feedback: the loss a batch of examples gives and the held-out metric of a model.

Classification scores each label string after the prompt and trains with cross-entropy over the labels'
log-probabilities, so the model learns exactly the decision it is evaluated on (macro-F1). Completion
trains the log-likelihood of the target text; its metric is the mean log-probability per target token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llmk.domain.metrics import macro_f1
from llmk.domain.task_spec import CLASSIFICATION, TaskSpec
from llmk.errors import InvalidInput
from services.optimizer.interface import Example
from services.optimizer.usecases.causal_lm import (
    Tokenizer,
    TrainableModel,
    build_model,
    load_tokenizer,
)
from services.optimizer.usecases.jobs import ParameterStore

EVAL_BATCH = 16


class FeedbackTrainer(TrainableModel):
    """A model, its tokenizer and a task; only the tensors named trainable ever get gradients."""

    def __init__(self, model: Any, tokenizer: Tokenizer, task: TaskSpec, trainable: Sequence[str]):
        super().__init__(model, tokenizer, trainable)
        self.task = task
        self.label_ids = [self._encode(task.label_prefix + label, "label") for label in task.labels]

    def evaluate(self, examples: Sequence[Example]) -> float:
        """Macro-F1 over the labels (classification) or mean log-prob per target token (completion)."""
        if self.task.kind == CLASSIFICATION:
            truth = [self.task.labels.index(e.label) for e in examples]
            return macro_f1(truth, self.predict(examples), len(self.label_ids))
        total, tokens = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(examples), EVAL_BATCH):
                logprob, count = self._completion_logprob(examples[i : i + EVAL_BATCH])
                total, tokens = total + float(logprob), tokens + count
        return total / tokens

    def predict(self, examples: Sequence[Example]) -> list[int]:
        out: list[int] = []
        with torch.no_grad():
            for i in range(0, len(examples), EVAL_BATCH):
                out.extend(self._label_scores(examples[i : i + EVAL_BATCH]).argmax(-1).tolist())
        return out

    def _loss(self, batch: Sequence[Example]) -> Tensor:
        if not batch:
            raise InvalidInput("empty batch: nothing to train on")
        if self.task.kind == CLASSIFICATION:
            truth = torch.tensor([self.task.labels.index(e.label) for e in batch])
            return F.cross_entropy(self._label_scores(batch), truth)
        total, tokens = self._completion_logprob(batch)
        return -total / tokens

    def _label_scores(self, batch: Sequence[Example]) -> Tensor:
        """log p(label | prompt) for every example and label: [N, L]."""
        prompts = [self.prompt_ids(e.text) for e in batch]
        contexts = [p for p in prompts for _ in self.label_ids]
        targets = [ids for _ in prompts for ids in self.label_ids]
        return self.scorer.logprobs(contexts, targets).view(len(batch), len(self.label_ids))

    def _completion_logprob(self, batch: Sequence[Example]) -> tuple[Tensor, int]:
        targets = [self._encode(e.completion, "completion") for e in batch]
        scores = self.scorer.logprobs([self.prompt_ids(e.prompt) for e in batch], targets)
        return scores.sum(), sum(len(t) for t in targets)

    def prompt_ids(self, text: str) -> list[int]:
        """The template around the example's text, the text cut to its first `max_tokens` tokens."""
        ids = self.tokenizer.encode(text)
        if len(ids) > self.task.max_tokens:
            text = self.tokenizer.decode(ids[: self.task.max_tokens])
        return self._encode(self.task.prompt(text), "prompt")

    def _encode(self, text: str, what: str) -> list[int]:
        ids = self.tokenizer.encode(text)
        if not ids:
            raise InvalidInput(f"the {what} {text!r} encodes to no tokens")
        return ids


def load_trainer(
    store: ParameterStore, model: str, ref: str, task: TaskSpec, trainable: Sequence[str] = ()
) -> FeedbackTrainer:
    """A stored version, ready to train `trainable` on `task` or to score held-out examples."""
    record = store.model(model)
    files = {name: store.file(model, name) for name in record.files}
    network = build_model(record.config, store.fetch(model, ref))
    tokenizer = load_tokenizer(files, int(record.config.get("vocab_size", 0)))
    return FeedbackTrainer(network, tokenizer, task, trainable)
