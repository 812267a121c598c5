"""Recommendations through the queue: the tier's RecClient as a producer of `llmk.rec.recommend` tasks.

Any rec worker consuming the queue (`llmk serve rec --worker`, or one on a thread of this process with the
in-process broker) answers with the version it served. A worker's refusal comes back as data, not as a
pickled exception, and is raised here as the same llmk error a gRPC or in-process caller gets.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from llmk import errors
from llmk.errors import LlmkError, Unavailable
from services.rec.interface import Recommendation, Scored

RECOMMEND = "llmk.rec.recommend"
TIMEOUT_SECONDS = 30.0


def error_of(payload: dict[str, Any]) -> LlmkError:
    """The llmk error a worker reported as {"error": class name, "message": text}."""
    kind = getattr(errors, str(payload.get("error")), None)
    if not (isinstance(kind, type) and issubclass(kind, LlmkError)):
        kind = LlmkError
    return kind(str(payload.get("message", "")))


def recommendation_of(payload: dict[str, Any]) -> Recommendation:
    items = [Scored(int(s["item"]), str(s["title"]), float(s["score"])) for s in payload["items"]]
    return Recommendation(
        int(payload["user"]), int(payload["version"]), items, bool(payload["popular_fallback"])
    )


class QueuedRecClient:
    """`model`'s recommendations from whichever rec worker takes the task first."""

    def __init__(self, app: Celery, model: str, timeout: float = TIMEOUT_SECONDS):
        self.app, self.model, self.timeout = app, model, timeout

    def recommend(self, user: int, k: int = 10, exclude: frozenset[int] = frozenset()) -> Recommendation:
        sent = self.app.send_task(
            RECOMMEND, kwargs={"model": self.model, "user": user, "k": k, "exclude": sorted(exclude)}
        )
        try:
            # the embedded worker shares this process, which Celery takes for a task waiting on a task
            payload: dict[str, Any] = sent.get(timeout=self.timeout, disable_sync_subtasks=False)
        except (TimeoutError, CeleryTimeout):
            raise Unavailable(
                f"no rec worker serving {self.model!r} answered on the queue within {self.timeout:.0f} s"
            ) from None
        if "error" in payload:
            raise error_of(payload)
        return recommendation_of(payload)

    def close(self) -> None:
        """Nothing to release: the Celery app belongs to the deployment."""
