"""Held-out evaluation of the served model through the same path that serves the stream.

A pass classifies the held-out texts in chunks, all in flight at once, and counts only if one version
answered every chunk: a hot update in the middle means the pass is repeated on the new version, so a
figure always belongs to exactly one version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from llmk.app.feedback import macro_f1
from llmk.app.monitor import Scoring

CHUNK = 32


@dataclass(frozen=True)
class Score:
    version: int
    macro_f1: float
    accuracy: float
    items: int
    seconds: float
    request_ms: list[float]  # each chunk's round trip, for the inference tier's latency figures


def evaluate(
    scoring: Scoring, texts: Sequence[str], truth: Sequence[str], labels: Sequence[str], timeout: float = 600
) -> Score | None:
    """Macro-F1 and accuracy of the served version on (texts, truth); None if the version changed."""
    start = time.monotonic()
    sent = [(time.monotonic(), scoring.submit(texts[i : i + CHUNK])) for i in range(0, len(texts), CHUNK)]
    predicted: list[str] = []
    versions: set[int] = set()
    request_ms = []
    for began, pending in sent:
        answer = pending.result(timeout)
        request_ms.append((time.monotonic() - began) * 1000)
        versions.add(int(answer["version"]))
        predicted += [r["label"] for r in answer["results"]]
    if len(versions) != 1:
        return None
    index = {label: i for i, label in enumerate(labels)}
    t, p = [index[x] for x in truth], [index[x] for x in predicted]
    accuracy = sum(a == b for a, b in zip(t, p, strict=True)) / len(t)
    return Score(
        versions.pop(), macro_f1(t, p, len(labels)), accuracy, len(t), time.monotonic() - start, request_ms
    )
