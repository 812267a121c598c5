"""The engine on the real SmolLM2-135M-Instruct: same greedy tokens as transformers, stable classification."""

from __future__ import annotations

import pytest
import torch

from services.inference.engine.classifier import classify, template_prefix
from services.inference.engine.generator import Generator, Request
from tests.conftest import SmolLM2

pytestmark = pytest.mark.smollm2

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about interest rates."}],
]
HEADLINES = [
    "Company reports record quarterly profits, shares jump 12%",
    "Bank files for bankruptcy after massive loan losses",
    "Central bank keeps interest rates unchanged",
    "Retailer cuts 5,000 jobs as sales slump",
]
LABELS = ["positive", "negative", "neutral"]
TEMPLATE = "Financial headline: {prompt}\nThe sentiment of this headline (positive, negative or neutral) is:"
FINANCE = "Is the sentiment of this financial news negative, positive or neutral?\nNews: {prompt}\nSentiment:"


def test_logits_equal_transformers(smollm2: SmolLM2) -> None:
    ids = torch.tensor([smollm2.tokenizer.encode("The stock market today")])
    with torch.no_grad():
        torch.testing.assert_close(smollm2.ours(ids), smollm2.hf(ids).logits, atol=1e-3, rtol=0)


def test_greedy_generation_equals_transformers_generate(smollm2: SmolLM2) -> None:
    tokenizer = smollm2.tokenizer
    with Generator(smollm2.ours, tokenizer, max_active=2, max_seq_len=512) as generator:
        streams = [generator.submit(Request(messages=chat, max_tokens=24)) for chat in CHATS]
        results = [s.result() for s in streams]
    for chat, result in zip(CHATS, results, strict=True):
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        prompt = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            expected = smollm2.hf.generate(prompt, do_sample=False, max_new_tokens=24)[0, prompt.shape[1] :]
        assert result.prompt_tokens == prompt.shape[1]
        assert result.token_ids == expected.tolist()
        assert result.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert result.finish_reason == ("eos" if expected[-1] == tokenizer.eos_token_id else "length")


def test_batched_classify_equals_one_at_a_time(smollm2: SmolLM2) -> None:
    batched = classify(smollm2.ours, smollm2.tokenizer, HEADLINES, LABELS, TEMPLATE)
    for headline, probs in zip(HEADLINES, batched, strict=True):
        [alone] = classify(smollm2.ours, smollm2.tokenizer, [headline], LABELS, TEMPLATE)
        assert probs == pytest.approx(alone, abs=1e-4)
        assert sum(probs.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("template", [FINANCE, TEMPLATE])
def test_prefix_cached_classify_equals_uncached(smollm2: SmolLM2, template: str) -> None:
    prefix = template_prefix(smollm2.ours, smollm2.tokenizer, template)
    assert prefix is not None
    assert prefix.length >= 3
    cached = classify(smollm2.ours, smollm2.tokenizer, HEADLINES, LABELS, template, prefix=prefix)
    plain = classify(smollm2.ours, smollm2.tokenizer, HEADLINES, LABELS, template)
    for with_prefix, without in zip(cached, plain, strict=True):
        assert with_prefix == pytest.approx(without, abs=1e-4)
