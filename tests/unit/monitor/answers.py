"""An answer of the inference tier as the monitor and the evaluation see it (usecases.monitor.Pending),
already there: for scorers that compute in the test's own process."""

from __future__ import annotations

from typing import Any


class Answered:
    def __init__(self, answer: dict[str, Any]):
        self.answer = answer

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        return self.answer

    def ready(self) -> bool:
        return True
