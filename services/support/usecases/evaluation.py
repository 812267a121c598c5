"""`llmk evaluate replies`: how likely one version finds the agents' reference replies, and how close its
own greedy replies come to them (ROUGE-L). Both under one version: the scorer's, which the generation is
pinned to."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from llmk.errors import InvalidInput
from services.inference.interface import Finished, GenerateRequest, InferenceClient
from services.support.interface import Pair, ReplyScore, ReplyScorer
from services.support.usecases.rouge import rouge_l

BATCH = 4  # pairs per forward pass: a reply of 300 tokens keeps [4, 300, vocab] float logits
MAX_ROWS = 100_000


def parse_pairs(text: str) -> list[Pair]:
    """The rows of a CSV with `instruction` and `response` columns (others ignored), each with both."""
    reader = csv.DictReader(io.StringIO(text))
    missing = {"instruction", "response"} - set(reader.fieldnames or ())
    if missing:
        raise InvalidInput(
            f"the CSV needs columns instruction and response; missing {', '.join(sorted(missing))}"
        )
    pairs = []
    for n, row in enumerate(reader, 2):
        instruction, response = (row.get("instruction") or "").strip(), (row.get("response") or "").strip()
        if not instruction or not response:
            raise InvalidInput(f"line {n}: instruction and response must both be non-empty")
        pairs.append(Pair(instruction, response))
        if len(pairs) > MAX_ROWS:
            raise InvalidInput(f"more than {MAX_ROWS} rows; split the file")
    if not pairs:
        raise InvalidInput("the CSV has no rows")
    return pairs


def evaluate_replies(
    scorer: ReplyScorer,
    inference: InferenceClient,
    pairs: list[Pair],
    generate: int = 0,
    max_tokens: int = 128,
) -> ReplyScore:
    """NLL per reference token over every pair; ROUGE-L of greedy replies on the first `generate` pairs."""
    if generate < 0:
        raise InvalidInput(f"--generate must be 0 or more, got {generate}")
    total, tokens = 0.0, 0
    for start in range(0, len(pairs), BATCH):
        for logprob, count in scorer.reply_logprobs(pairs[start : start + BATCH]):
            total, tokens = total - logprob, tokens + count
    chosen = pairs[:generate]
    scores = [
        rouge_l(_greedy(inference, p.instruction, scorer.version, max_tokens), p.response) for p in chosen
    ]
    rouge = sum(scores) / len(scores) if scores else None
    return ReplyScore(scorer.version, len(pairs), total / max(tokens, 1), tokens, rouge, len(scores))


def _greedy(inference: InferenceClient, message: str, version: int, max_tokens: int) -> str:
    request = GenerateRequest(message, max_tokens=max_tokens, temperature=0.0, chat=True, pin=str(version))
    return "".join(_pieces(inference.generate(request)))


def _pieces(items: Iterator[str | Finished]) -> Iterator[str]:
    for item in items:
        if isinstance(item, str):
            yield item
