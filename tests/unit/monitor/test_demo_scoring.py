"""Every version the workers served gets a held-out figure: one that a newer version replaced before a
live pass finished on it is scored afterwards, on a client pinned to it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from llmk.errors import NotFound
from services.monitor.usecases.demo_run import DemoRun, Plan
from services.monitor.usecases.evaluation import Score

LABELS = ("negative", "positive", "neutral")


@dataclass
class Answered:
    answer: dict[str, Any]

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        return self.answer

    def ready(self) -> bool:
        return True


@dataclass
class Pinned:
    """A classifier serving one version: it says "neutral" to everything."""

    version: int

    def submit(self, texts: Sequence[str]) -> Answered:
        return Answered({"version": self.version, "results": [{"label": "neutral"} for _ in texts]})


def run_with(served: dict[int, float], scored: set[int]) -> DemoRun:
    held_out = [(f"text {i}", LABELS[i % 3]) for i in range(40)]
    plan = Plan([], [], [], held_out, LABELS, [])
    run = DemoRun(plan, Pinned(0), None, None, "job", lambda: max(served))  # type: ignore[arg-type]
    run.timeline.served_at = dict(served)
    run.timeline.scores = {v: Score(v, 0.5, 0.5, 40, 1.0, []) for v in scored}
    return run


def test_versions_replaced_mid_pass_are_scored_pinned_and_marked() -> None:
    run = run_with({1: 0.0, 3: 5.0, 4: 6.0, 7: 9.0}, {1, 7})
    asked: list[int] = []

    @contextmanager
    def pinned(version: int) -> Iterator[Pinned]:
        asked.append(version)
        yield Pinned(version)

    run.score_replaced(pinned)
    t = run.timeline
    assert asked == [3, 4]
    assert sorted(t.scores) == [1, 3, 4, 7]
    assert t.scored_pinned == [3, 4]
    assert t.scores[3].accuracy == 13 / 40  # "neutral" is right on rows 2, 5, ..., 38
    assert t.evaluation_passes == 2


def test_a_pinned_answer_from_another_version_or_an_error_leaves_the_version_unscored() -> None:
    run = run_with({1: 0.0, 2: 5.0, 3: 6.0}, {1})

    @contextmanager
    def pinned(version: int) -> Iterator[Pinned]:
        if version == 2:
            raise NotFound("version 2 was collected")
        yield Pinned(version + 1)  # a server that ignores the pin

    run.score_replaced(pinned)
    assert sorted(run.timeline.scores) == [1]
    assert run.timeline.scored_pinned == []
