"""The Celery task `llmk.rec.recommend` on the rec queue, answered by a worker following its branch.

The task only checks the model, asks the worker and encodes the answer; an llmk error (a bad k, another
model) is answered as data so the producer raises the same error class (services.rec.queue.client).
Every worker on one queue should serve the same model (a queue per model: LLMK_REC_QUEUE).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from llmk.errors import InvalidInput, LlmkError, NotFound
from services.rec.queue.client import RECOMMEND
from services.rec.usecases.following import RecWorker

__all__ = ["RECOMMEND", "register"]


def register(app: Celery, worker: RecWorker) -> None:
    """The task a rec worker runs, bound to it."""

    @app.task(name=RECOMMEND, shared=False, acks_late=True)
    def recommend(model: str, user: int, k: int = 10, exclude: list[int] | None = None) -> dict[str, Any]:
        try:
            if model != worker.model:
                raise NotFound(f"this worker serves {worker.model!r}, not {model!r}")
            if not isinstance(user, int) or not isinstance(k, int):
                raise InvalidInput(f"user and k must be integers, got {user!r} and {k!r}")
            return worker.recommend(user, k, frozenset(exclude or ())).as_dict()
        except LlmkError as e:
            return {"error": type(e).__name__, "message": str(e)}
