"""Celery tasks `llmk.inference.classify` and `llmk.inference.generate` on the `inference` queue.

The tasks only decode, call the Host (whose batcher they share with gRPC callers), encode, and retry when
the worker is full. Acks are late and prefetch is 1, so a message taken by a worker that dies is delivered
again, and any number of worker processes share the queue fairly. Producers need only `make_app(settings)`
and `send_task` by name; workers also `register` the tasks over their Host. Every worker consuming one
queue should serve the same model (a queue per model: LLMK_INFERENCE_QUEUE), since a task naming another
model fails with FAILED_PRECONDITION rather than waiting for a worker that has it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from celery import Celery, Task

from llmk.errors import InvalidInput, ResourceExhausted, Unavailable
from services.inference.engine.generator import Request
from services.inference.queue.client import CLASSIFY, GENERATE
from services.inference.usecases.host import Host

__all__ = ["CLASSIFY", "GENERATE", "register", "request_of"]
RETRY = dict(
    autoretry_for=(ResourceExhausted, Unavailable), retry_backoff=True, retry_jitter=True, max_retries=8
)


def register(app: Celery, host: Host) -> None:
    """The tasks a worker runs, bound to its Host."""

    @app.task(name=CLASSIFY, bind=True, shared=False, acks_late=True, **RETRY)
    def classify(
        self: Task,
        texts: list[str],
        labels: list[str] | None = None,
        template: str = "",
        model: str = "",
        version: str = "",
    ) -> dict[str, Any]:
        answer = host.classify(texts, labels or (), template, model, version)
        return {"version": answer.version, "results": [dataclasses.asdict(s) for s in answer.results]}

    @app.task(name=GENERATE, bind=True, shared=False, acks_late=True, **RETRY)
    def generate(self: Task, request: dict[str, Any], model: str = "", version: str = "") -> dict[str, Any]:
        result = host.generate(request_of(request), model, version).result()
        return dataclasses.asdict(result)


def request_of(fields: dict[str, Any]) -> Request:
    known = {f.name for f in dataclasses.fields(Request)}
    if unknown := sorted(set(fields) - known):
        raise InvalidInput(f"unknown generate field(s) {unknown}; known: {sorted(known)}")
    return Request(**fields)
