"""What a user could do with the same labelled rows instead of online feedback: the learner's yardsticks.

Each baseline trains on exactly the rows given and is scored on the held-out rows given: a bag of words
(TF-IDF over word 1-2 grams + logistic regression), a linear probe on the frozen model's last hidden state
at the prompt's last token, and a dense fine-tune of the same tensors the optimizer may change (every step
applied whole, no sparsification: the quality ceiling for the optimizer's budget).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from llmk.domain.metrics import macro_f1
from llmk.domain.optim import OptimizerSpec, optimizer_step
from llmk.errors import InvalidInput
from services.optimizer.interface import Example
from services.optimizer.usecases.feedback import FeedbackTrainer

FEATURE_BATCH = 32


@dataclass(frozen=True)
class Figures:
    macro_f1: float
    accuracy: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in vars(self).items()}


def score(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str], began: float) -> Figures:
    index = {label: i for i, label in enumerate(labels)}
    t, p = [index[x] for x in truth], [index[x] for x in predicted]
    accuracy = sum(a == b for a, b in zip(t, p, strict=True)) / len(t)
    return Figures(macro_f1(t, p, len(labels)), accuracy, time.monotonic() - began)


def tfidf_lr(train: Sequence[Example], test: Sequence[Example], labels: Sequence[str]) -> Figures:
    """TF-IDF of word 1-2 grams, then a logistic regression (scikit-learn's defaults otherwise)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    _check(train, test)
    began = time.monotonic()
    vectors = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vectors.fit_transform([e.text for e in train])
    model = LogisticRegression(max_iter=2000, C=10.0).fit(x, [e.label for e in train])
    predicted = model.predict(vectors.transform([e.text for e in test]))
    return score([e.label for e in test], list(predicted), labels, began)


def linear_probe(trainer: FeedbackTrainer, train: Sequence[Example], test: Sequence[Example]) -> Figures:
    """Logistic regression on the frozen model's final hidden state at the prompt's last token."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    _check(train, test)
    began = time.monotonic()
    scale = StandardScaler().fit(features := hidden_states(trainer, train))
    model = LogisticRegression(max_iter=2000, C=0.05).fit(scale.transform(features), [e.label for e in train])
    predicted = model.predict(scale.transform(hidden_states(trainer, test)))
    return score([e.label for e in test], list(predicted), trainer.task.labels, began)


def hidden_states(trainer: FeedbackTrainer, examples: Sequence[Example]) -> np.ndarray:
    """[N, D]: the last layer's normed output at each prompt's last token."""
    rows = []
    with torch.no_grad():
        for i in range(0, len(examples), FEATURE_BATCH):
            prompts = [trainer.prompt_ids(e.text) for e in examples[i : i + FEATURE_BATCH]]
            rows.append(trainer.scorer.last_hidden(prompts))
    return torch.cat(rows).numpy()


def dense(
    trainer: FeedbackTrainer,
    train: Sequence[Example],
    test: Sequence[Example],
    lr: float,
    epochs: int = 2,
    batch_size: int = 16,
    seed: int = 0,
) -> Figures:
    """AdamW on the trainer's trainable tensors, every update applied whole; the trainer is left changed."""
    _check(train, test)
    began = time.monotonic()
    spec = OptimizerSpec(kind="adamw", lr=lr)
    state: dict[str, torch.Tensor] = {}
    order = list(train)
    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            _, grads = trainer.loss_and_grads(order[i : i + batch_size])
            params = trainer.values()
            step = optimizer_step(spec, params, grads, state)
            trainer.set_values({n: params[n] + d.to(params[n].dtype) for n, d in step.items()})
    predicted = [trainer.task.labels[i] for i in trainer.predict(test)]
    return score([e.label for e in test], predicted, trainer.task.labels, began)


def _check(train: Sequence[Example], test: Sequence[Example]) -> None:
    if not train or not test:
        raise InvalidInput(f"a baseline needs rows to train and to test on, got {len(train)} and {len(test)}")
