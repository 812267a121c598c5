"""Feedback scoring: batched, left-padded label log-probs equal one-at-a-time ones; macro-F1 as sklearn's."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from llmk.domain.metrics import macro_f1
from llmk.errors import InvalidInput
from services.optimizer.usecases.causal_lm import ByteTokenizer, Scorer, build_model, load_tokenizer
from services.store.adapters.importers import load_source


@pytest.fixture(scope="module")
def model() -> object:
    imported = load_source("synthetic:llama-tiny")
    return build_model(imported.config, imported.tensors)


@pytest.mark.parametrize("split", [0, 1, 2], ids=["whole-model", "cached-layer-0", "cached-layers-0-1"])
def test_batched_scores_equal_unpadded_ones(model: object, split: int) -> None:
    """Left padding, shared rows and the cached output of frozen layers change no score."""
    contexts = [[5, 6, 7, 8, 9], [3], [1, 2], [1, 2]]
    targets = [[10], [11, 12], [13], [13, 14, 15]]
    scorer = Scorer(model, split)
    batched = scorer.logprobs(contexts, targets)
    assert torch.equal(scorer.logprobs(contexts, targets), batched)  # the second time from the cache
    with torch.no_grad():
        for score, context, target in zip(batched, contexts, targets, strict=True):
            logp = model(input_ids=torch.tensor([context + target])).logits.log_softmax(-1)[0]  # type: ignore[operator]
            alone = sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(target))
            assert float(score) == pytest.approx(alone, abs=1e-4)


def test_gradients_flow_only_into_trainable_tensors(model: object) -> None:
    params = dict(model.named_parameters())  # type: ignore[attr-defined]
    up = params["model.layers.1.mlp.up_proj.weight"]
    up.requires_grad_(True)
    try:
        Scorer(model, split=1).logprobs([[1, 2, 3], [4]], [[5], [6, 7]]).sum().backward()
        assert up.grad is not None
        assert bool(torch.isfinite(up.grad).all())
        assert float(up.grad.abs().sum()) > 0
        assert params["model.layers.0.mlp.up_proj.weight"].grad is None
    finally:
        up.requires_grad_(False)
        up.grad = None


def test_macro_f1_matches_a_hand_computation() -> None:
    # per label F1: 0 -> 2*1/(2+1+1) = 0.5, 1 -> 2*2/(4+1) = 0.8, 2 -> 0; label 3 never occurs and is skipped
    assert macro_f1([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 4) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1([1, 1], [1, 1], 2) == 1.0


def test_models_without_tokenizer_files_get_byte_tokens() -> None:
    tokenizer = load_tokenizer({"config.json": b"{}"}, vocab_size=49152)
    assert isinstance(tokenizer, ByteTokenizer)
    assert tokenizer.encode("hé") == [104, 195, 169]


@pytest.mark.parametrize("name", ["../../escaped.json", "/tmp/llmk-absolute.json"])
def test_a_tokenizer_file_name_never_writes_outside_its_folder(name: str) -> None:
    """The store refuses such names; the loader refuses them too, for stores that did not."""
    files = {"tokenizer.json": b"{}", name: b"x"}
    with pytest.raises(InvalidInput, match="file name"):
        load_tokenizer(files, vocab_size=49152)
    assert not Path("/tmp/llmk-absolute.json").exists()
    assert not Path(tempfile.gettempdir(), "..", "escaped.json").exists()
