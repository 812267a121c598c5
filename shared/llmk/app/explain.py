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

MAX_WORDS = 64  # longer texts: only their first words are occluded (one variant per word)

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


def explain(classify: Classify, text: str, chunk: int = 64, label: str | None = None) -> Explanation:
    """Occlusion attributions for `label` (default: the label `classify` gives `text`)."""
    words = text.split()
    occluded = [without(words, {i}) or "." for i in range(min(len(words), MAX_WORDS))]
    texts = [text, *occluded]
    answers, versions = [], set()
    for start in range(0, len(texts), chunk):  # one request per chunk; every answer names its version
        answer = classify(texts[start : start + chunk])
        answers += answer["results"]
        versions.add(int(answer["version"]))
    if len(versions) != 1:
        raise Unavailable(f"the served version changed while explaining ({sorted(versions)}); try again")
    label = label or answers[0]["label"]
    base = float(answers[0]["probabilities"][label])
    drops = [base - float(a["probabilities"][label]) for a in answers[1:]]
    drops += [0.0] * (len(words) - len(drops))
    return Explanation(text, label, base, versions.pop(), words, drops)
