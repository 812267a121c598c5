"""Held-out evaluation while versions change under it: a figure belongs to exactly one version, and a hot
update mid-pass costs only the chunks the older version answered."""

from __future__ import annotations

from collections.abc import Sequence

from services.monitor.usecases.evaluation import CHUNK, ROUNDS, evaluate
from tests.unit.monitor.answers import Answered

LABELS = ["negative", "positive", "neutral"]


class Worker:
    """Answers each request with the version serving at that moment: `versions[n]` for the n-th request
    (the last one from then on). Version 1 always says negative; any later version says the truth."""

    def __init__(self, truth: dict[str, str], versions: list[int]):
        self.truth, self.versions, self.sent = truth, versions, []

    def submit(self, texts: Sequence[str]) -> Answered:
        version = self.versions[min(len(self.sent), len(self.versions) - 1)]
        self.sent.append(list(texts))
        labels = [self.truth[t] if version > 1 else "negative" for t in texts]
        return Answered({"version": version, "results": [{"label": label} for label in labels]})


def held_out(n: int) -> tuple[list[str], list[str]]:
    texts = [f"headline {i}" for i in range(n)]
    return texts, [LABELS[i % 3] for i in range(n)]


def test_a_pass_on_one_version_scores_that_version() -> None:
    texts, truth = held_out(3 * CHUNK)
    worker = Worker(dict(zip(texts, truth, strict=True)), [1])
    score = evaluate(worker, texts, truth, LABELS)
    assert score is not None
    assert (score.version, score.items, len(worker.sent)) == (1, 3 * CHUNK, 3)
    assert round(score.accuracy, 3) == round(1 / 3, 3)


def test_an_update_mid_pass_resends_only_what_the_old_version_answered() -> None:
    texts, truth = held_out(4 * CHUNK)
    worker = Worker(dict(zip(texts, truth, strict=True)), [1, 1, 2])  # the third request meets version 2
    score = evaluate(worker, texts, truth, LABELS)
    assert score is not None
    assert score.version == 2
    assert score.accuracy == 1.0, "every figure is version 2's: no answer of version 1 is counted"
    assert len(worker.sent) == 6, "two chunks sent again, not the whole pass"
    assert worker.sent[4:] == worker.sent[:2]


def test_versions_that_never_settle_give_no_figure() -> None:
    texts, truth = held_out(2 * CHUNK)
    changing = list(range(1, 2 * ROUNDS + 2))  # a new version for every request
    assert evaluate(Worker(dict(zip(texts, truth, strict=True)), changing), texts, truth, LABELS) is None
