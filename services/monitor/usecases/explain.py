"""Why a text got its label: occlusion attributions over its words, computed on the served version.

A word's attribution is how much the label's probability drops when the word is left out. It needs only
classify, so it runs wherever classify runs (in-process, the queue, gRPC) and on the version that serves
the stream; the text and all its variants are scored in one request so one version scores them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmk.errors import Unavailable

CHUNK = 64  # texts per request (a worker's default max_texts)
MAX_WORDS = CHUNK - 1  # a text and its variants fit one request, so one version scores them all

# texts -> {"version": int, "results": [{"label", "probabilities"}, ...]}, one version for all of them
Classify = Callable[[Sequence[str]], dict[str, Any]]


@dataclass(frozen=True)
class Explanation:
    text: str
    label: str
    probability: float
    version: int
    words: list[str]
    attributions: list[float]  # per word: p(label | text) - p(label | text without the word)

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = sorted(range(len(self.words)), key=lambda i: -self.attributions[i])
        return [(self.words[i], round(self.attributions[i], 4)) for i in order[:k]]


def without(words: Sequence[str], drop: set[int]) -> str:
    return " ".join(w for i, w in enumerate(words) if i not in drop)


def variants(text: str) -> tuple[list[str], list[str]]:
    """The text's words, and the texts to score: the text itself, then one per occluded word."""
    words = text.split()
    occluded = [without(words, {i}) or "." for i in range(min(len(words), MAX_WORDS))]
    return words, [text, *occluded]


def attribute(
    text: str, words: list[str], answers: Sequence[dict[str, Any]], label: str | None
) -> Explanation:
    """The explanation from the answers to variants(text), in order, each {"version", "results"}."""
    results = [r for a in answers for r in a["results"]]
    versions = {int(a["version"]) for a in answers}
    if len(versions) != 1:
        raise Unavailable(f"the served version changed while explaining ({sorted(versions)}); try again")
    label = label or results[0]["label"]
    base = float(results[0]["probabilities"][label])
    drops = [base - float(r["probabilities"][label]) for r in results[1:]]
    drops += [0.0] * (len(words) - len(drops))
    return Explanation(text, label, base, versions.pop(), words, drops)


def explain(classify: Classify, text: str, chunk: int = CHUNK, label: str | None = None) -> Explanation:
    """Occlusion attributions for `label` (default: the label `classify` gives `text`)."""
    words, texts = variants(text)
    answers = [classify(texts[start : start + chunk]) for start in range(0, len(texts), chunk)]
    return attribute(text, words, answers, label)
