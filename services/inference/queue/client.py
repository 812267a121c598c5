"""The inference queue as producers and workers both see it: the task names
and a producer that puts classify work on the queue and waits for its answers.

Workers (services/inference/queue/tasks.py) register the tasks on the app llmk.bootstrap makes;
producers (the monitor, the CLI) only send by name. In the embedded mode both sides share one app over
the in-process broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from llmk.errors import Unavailable

CLASSIFY = "llmk.inference.classify"
GENERATE = "llmk.inference.generate"


class PendingClassify:
    """An answer on its way back from the queue."""

    def __init__(self, result: AsyncResult):
        self._result = result

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """{"version": int, "results": [{"label", "probabilities", "prompt_tokens"}, ...]}."""
        try:
            # the embedded worker shares this process, which Celery takes for a task waiting on a task
            answer: dict[str, Any] = self._result.get(
                timeout=timeout, propagate=True, disable_sync_subtasks=False
            )
        except TimeoutError:
            raise Unavailable(f"no inference worker answered within {timeout} s") from None
        return {**answer, "version": int(answer["version"])}

    def ready(self) -> bool:
        """Answered (or failed): result() will not wait."""
        return bool(self._result.ready())


class QueuedClassifier:
    """Puts classify work for one model on the inference queue; any worker serving the model answers."""

    def __init__(self, app: Celery, model: str):
        self.app, self.model = app, model

    def submit(self, texts: Sequence[str]) -> PendingClassify:
        """Labels and template are left to the worker: it scores the served version's own task."""
        return PendingClassify(
            self.app.send_task(CLASSIFY, args=(list(texts),), kwargs={"model": self.model})
        )
