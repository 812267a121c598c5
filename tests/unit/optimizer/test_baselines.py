"""The learning baselines a report compares the online learner with: each trains on the rows given and is
scored on the held-out rows given (tiny synthetic model: its figures are arbitrary, its mechanics are not)."""

from __future__ import annotations

import pytest
import torch

from llmk.domain.task_spec import TaskSpec
from llmk.errors import InvalidInput
from services.optimizer.interface import Example
from services.optimizer.usecases import baselines
from services.optimizer.usecases.causal_lm import build_model, load_tokenizer
from services.optimizer.usecases.feedback import FeedbackTrainer
from services.store.adapters.importers import load_source

TASK = TaskSpec(labels=("down", "up"), template="{text}\nMove:", max_tokens=16)
TRAINABLE = ["model.layers.1.mlp.up_proj.weight"]


def _rows(n: int) -> list[Example]:
    words = {"down": "plunges after a profit warning", "up": "soars on record earnings"}
    return [Example(text=f"$T{i} {words[label]}", label=label) for i in range(n) for label in ("down", "up")]


@pytest.fixture
def trainer() -> FeedbackTrainer:
    imported = load_source("synthetic:llama-tiny")
    tensors = {n: t.clone() for n, t in imported.tensors.items()}
    model = build_model(imported.config, tensors)
    return FeedbackTrainer(model, load_tokenizer({}, int(imported.config["vocab_size"])), TASK, TRAINABLE)


def test_tfidf_lr_learns_words_that_decide_the_label() -> None:
    figures = baselines.tfidf_lr(_rows(20), _rows(5), TASK.labels)
    assert figures.macro_f1 == 1.0
    assert figures.accuracy == 1.0
    assert set(figures.as_dict()) == {"macro_f1", "accuracy", "seconds"}


def test_linear_probe_reads_the_frozen_model_and_changes_nothing(trainer: FeedbackTrainer) -> None:
    before = {n: v.clone() for n, v in trainer.values().items()}
    features = baselines.hidden_states(trainer, _rows(3))
    assert features.shape == (6, trainer.model.config.hidden_size)
    figures = baselines.linear_probe(trainer, _rows(20), _rows(5))
    assert 0.0 <= figures.macro_f1 <= 1.0
    assert all(torch.equal(before[n], v) for n, v in trainer.values().items())


def test_dense_fine_tune_changes_only_the_trainable_tensors(trainer: FeedbackTrainer) -> None:
    frozen = dict(trainer.model.named_parameters())["model.layers.1.mlp.down_proj.weight"].clone()
    before = trainer.values()[TRAINABLE[0]].clone()
    figures = baselines.dense(trainer, _rows(16), _rows(4), lr=1e-3, epochs=1)
    assert not torch.equal(trainer.values()[TRAINABLE[0]], before)
    assert torch.equal(dict(trainer.model.named_parameters())["model.layers.1.mlp.down_proj.weight"], frozen)
    assert 0.0 <= figures.accuracy <= 1.0


def test_a_baseline_without_rows_says_so() -> None:
    with pytest.raises(InvalidInput, match="needs rows to train and to test on, got 0 and 2"):
        baselines.tfidf_lr([], _rows(1), TASK.labels)
