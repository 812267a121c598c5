"""Classification by label likelihood, alone and through the dynamic batcher."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest
import torch

from llmk.errors import InvalidInput, ResourceExhausted
from services.inference.engine.batcher import ClassifyBatcher
from services.inference.engine.classifier import classify, template_prefix
from services.inference.engine.weights import set_weight

from .conftest import Pair, tiny_llama_pair

PROMPTS = ["stocks soar", "bank fails", "rates unchanged today", "x"]
LABELS = ["positive", "negative", "neutral"]
TEMPLATE = "Headline: {prompt}\nSentiment:"
FINANCE = "Is the sentiment of this financial news negative, positive or neutral?\nNews: {prompt}\nSentiment:"


def test_probabilities_follow_label_log_likelihoods(tiny: Pair, byte_tokenizer: Any) -> None:
    [probs] = classify(tiny.ours, byte_tokenizer, ["up"], LABELS, TEMPLATE)
    context = byte_tokenizer.encode(TEMPLATE.replace("{prompt}", "up"))
    scores = []
    with torch.no_grad():
        for label in LABELS:
            ids = context + byte_tokenizer.encode(" " + label)
            logp = tiny.ours(torch.tensor([ids]))[0].log_softmax(-1)
            scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(context), len(ids))))
    expected = torch.tensor(scores).softmax(-1).tolist()
    assert list(probs) == LABELS
    assert [probs[lab] for lab in LABELS] == pytest.approx(expected, abs=1e-5)


def test_batched_equals_one_at_a_time(tiny: Pair, byte_tokenizer: Any) -> None:
    batched = classify(tiny.ours, byte_tokenizer, PROMPTS, LABELS, TEMPLATE)
    for prompt, probs in zip(PROMPTS, batched, strict=True):
        [alone] = classify(tiny.ours, byte_tokenizer, [prompt], LABELS, TEMPLATE)
        assert probs == pytest.approx(alone, abs=1e-5)
        assert sum(probs.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("prompts", "labels", "template"),
    [
        ([], LABELS, TEMPLATE),
        (PROMPTS, [], TEMPLATE),
        (PROMPTS, ["a", "a"], TEMPLATE),
        (PROMPTS, LABELS, "no slot"),
    ],
)
def test_bad_requests_are_refused(
    tiny_llama: Pair, byte_tokenizer: Any, prompts: list[str], labels: list[str], template: str
) -> None:
    with pytest.raises(InvalidInput):
        classify(tiny_llama.ours, byte_tokenizer, prompts, labels, template)


def test_batcher_serves_many_threads_like_direct_calls(tiny_llama: Pair, byte_tokenizer: Any) -> None:
    direct = classify(tiny_llama.ours, byte_tokenizer, PROMPTS, LABELS, TEMPLATE)
    other_labels = ["yes", "no"]
    direct_other = classify(tiny_llama.ours, byte_tokenizer, PROMPTS, other_labels, TEMPLATE)
    batcher = ClassifyBatcher(tiny_llama.ours, byte_tokenizer, max_batch_size=3, max_wait_ms=20)
    results: dict[int, Any] = {}

    def call(i: int) -> None:
        labels = LABELS if i % 2 == 0 else other_labels
        results[i] = batcher.classify([PROMPTS[i % 4]], labels, TEMPLATE)[0]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    for i, probs in results.items():
        expected = direct[i % 4] if i % 2 == 0 else direct_other[i % 4]
        assert probs == pytest.approx(expected, abs=1e-5)
    assert len(results) == 8


def test_batcher_refuses_when_its_queue_is_full(tiny_llama: Pair, byte_tokenizer: Any) -> None:
    batcher = ClassifyBatcher(tiny_llama.ours, byte_tokenizer, max_batch_size=1, max_wait_ms=0, max_queue=2)
    accepted: list[Future[Any]] = []
    with batcher.lock, pytest.raises(ResourceExhausted):  # the lock blocks the worker before its first batch
        # extend keeps the futures accepted before the refusal
        accepted.extend(batcher.submit(["up"], LABELS, TEMPLATE) for _ in range(5))
    assert 2 <= len(accepted) <= 3
    assert all(sum(f.result(timeout=10)[0].values()) == pytest.approx(1.0) for f in accepted)
    batcher.close()


def test_batcher_refuses_bad_requests_at_once(tiny_llama: Pair, byte_tokenizer: Any) -> None:
    batcher = ClassifyBatcher(tiny_llama.ours, byte_tokenizer)
    with pytest.raises(InvalidInput):
        batcher.submit(PROMPTS, ["same", "same"], TEMPLATE)
    batcher.close()


@pytest.mark.parametrize("labels", [LABELS, ["up a lot", "down", "flat"]])
def test_prefix_cached_classify_equals_uncached(tiny: Pair, byte_tokenizer: Any, labels: list[str]) -> None:
    prefix = template_prefix(tiny.ours, byte_tokenizer, FINANCE)
    assert prefix is not None
    assert prefix.length == len(FINANCE.split("{prompt}")[0]) - 1  # a byte a token
    cached = classify(tiny.ours, byte_tokenizer, PROMPTS, labels, FINANCE, prefix=prefix)
    plain = classify(tiny.ours, byte_tokenizer, PROMPTS, labels, FINANCE)
    for with_prefix, without in zip(cached, plain, strict=True):
        assert with_prefix == pytest.approx(without, abs=1e-4)


def test_a_prefix_the_prompts_do_not_start_with_is_not_used(tiny_llama: Pair, byte_tokenizer: Any) -> None:
    wrong = template_prefix(tiny_llama.ours, byte_tokenizer, "Other words: {prompt}")
    assert wrong is not None
    cached = classify(tiny_llama.ours, byte_tokenizer, PROMPTS, LABELS, FINANCE, prefix=wrong)
    plain = classify(tiny_llama.ours, byte_tokenizer, PROMPTS, LABELS, FINANCE)
    assert cached == plain


def _gap(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    return max(abs(x[k] - y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_batcher_recomputes_the_template_prefix_when_the_weights_change(byte_tokenizer: Any) -> None:
    model = tiny_llama_pair().ours  # its own copy: the weights change below
    batcher = ClassifyBatcher(model, byte_tokenizer, max_wait_ms=0, version=1)
    assert (
        _gap(
            batcher.classify(PROMPTS, LABELS, FINANCE),
            classify(model, byte_tokenizer, PROMPTS, LABELS, FINANCE),
        )
        < 1e-4
    )
    stale = template_prefix(model, byte_tokenizer, FINANCE)
    torch.manual_seed(1)
    with batcher.lock:  # as a hot update does: through set_weight, between batches
        for part in ("k_proj", "v_proj"):
            name = f"model.layers.0.self_attn.{part}.weight"
            set_weight(model, name, torch.randn_like(model.get_parameter(name)))
    uncached = classify(model, byte_tokenizer, PROMPTS, LABELS, FINANCE)
    assert _gap(batcher.classify(PROMPTS, LABELS, FINANCE), uncached) < 1e-4
    # multi-token labels (every label, byte by byte) re-encode each whole prompt: a stale prefix cannot leak
    assert _gap(classify(model, byte_tokenizer, PROMPTS, LABELS, FINANCE, prefix=stale), uncached) < 1e-4

    with batcher.lock, torch.no_grad():  # a new version stamped on weights changed by other means
        model.get_parameter("model.layers.1.self_attn.v_proj.weight").normal_()
        batcher.version = 2
    after_stamp = batcher.classify(PROMPTS, LABELS, FINANCE)
    batcher.close()
    assert after_stamp.version == 2
    assert _gap(after_stamp, classify(model, byte_tokenizer, PROMPTS, LABELS, FINANCE)) < 1e-4
    assert _gap(after_stamp, uncached) > 1e-3


def test_many_labels_of_unequal_length_score_as_full_rows_would(tiny: Pair, byte_tokenizer: Any) -> None:
    """The shared-prefix path (each prompt's keys and values once, a short row per label) gives exactly what
    scoring every prompt + label as its own full row gives."""
    labels = [f"intent_{'x' * (i % 7)}{i}" for i in range(40)]
    prompts = ["where is my card", "z"]
    results = classify(tiny.ours, byte_tokenizer, prompts, labels, TEMPLATE)
    for prompt, probs in zip(prompts, results, strict=True):
        context = byte_tokenizer.encode(TEMPLATE.replace("{prompt}", prompt))
        scores = []
        with torch.no_grad():
            for label in labels:
                ids = context + byte_tokenizer.encode(" " + label)
                logp = tiny.ours(torch.tensor([ids]))[0].log_softmax(-1)
                scores.append(sum(float(logp[t - 1, ids[t]]) for t in range(len(context), len(ids))))
        expected = torch.tensor(scores).softmax(-1).tolist()
        assert [probs[lab] for lab in labels] == pytest.approx(expected, abs=1e-5)
