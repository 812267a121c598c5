"""Held-out evaluation of the served model through the same path that serves the stream.

A pass classifies the held-out texts in chunks, all in flight at once, and a figure counts only when one
version answered every chunk, so it always belongs to exactly one version. A hot update in the middle of a
pass costs only the chunks the older version answered: they are sent again, and the chunks the new version
already answered are kept. (Repeating the whole pass instead lost every version of the demo's stream but
the last: versions came about every 20 s, and a pass behind the stream took about as long.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from llmk.domain.metrics import macro_f1
from services.monitor.usecases.monitor import Scoring

CHUNK = 32
ROUNDS = 8  # rounds of resending what an older version answered, before a pass gives up


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
    """Macro-F1 and accuracy of the served version on (texts, truth); None when versions kept changing
    through ROUNDS rounds of resending."""
    start = time.monotonic()
    answers: dict[int, tuple[int, list[str]]] = {}  # chunk start -> (version, predicted labels)
    request_ms: list[float] = []
    latest: int | None = None  # the version of the last answer: the one serving now
    for _ in range(ROUNDS):
        todo = [i for i in range(0, len(texts), CHUNK) if i not in answers or answers[i][0] != latest]
        if not todo:
            break
        sent = [(i, time.monotonic(), scoring.submit(texts[i : i + CHUNK])) for i in todo]
        for i, began, pending in sent:
            answer = pending.result(timeout)
            request_ms.append((time.monotonic() - began) * 1000)
            latest = int(answer["version"])
            answers[i] = (latest, [r["label"] for r in answer["results"]])
    if {version for version, _ in answers.values()} != {latest}:
        return None
    predicted = [label for i in sorted(answers) for label in answers[i][1]]
    index = {label: i for i, label in enumerate(labels)}
    t, p = [index[x] for x in truth], [index[x] for x in predicted]
    accuracy = sum(a == b for a, b in zip(t, p, strict=True)) / len(t)
    assert latest is not None
    return Score(latest, macro_f1(t, p, len(labels)), accuracy, len(t), time.monotonic() - start, request_ms)
