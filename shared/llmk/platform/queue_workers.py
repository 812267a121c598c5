"""A Celery worker on threads of this process: the embedded mode's workers, and `serve optimizer`'s."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery
from celery._state import _set_current_app
from celery.concurrency.thread import TaskPool

log = logging.getLogger("llmk.queue")


class AppThreadPool(TaskPool):
    """Celery's thread pool, whose threads take the worker's own app as their current app.

    Celery runs a task by looking its name up in the current app; with one worker per process that is the
    default app, but the embedded mode runs two (inference and optimizer), each with its own app."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        vars(self)["executor"].shutdown()  # replaced by one whose threads know the app
        self.executor = ThreadPoolExecutor(self.limit, initializer=_set_current_app, initargs=(self.app,))


class InProcessWorker:
    """A Celery worker on a thread of this process: the embedded mode's worker, and `serve optimizer`'s."""

    def __init__(self, app: Celery, queue: str, concurrency: int = 1, name: str = "worker"):
        self.app = app
        self.controller = app.WorkController(
            pool_cls=AppThreadPool,
            concurrency=concurrency,
            queues=[queue],
            hostname=f"{name}-{uuid.uuid4().hex[:8]}@{socket.gethostname()}",
            without_mingle=True,
            without_gossip=True,
            without_heartbeat=True,
            loglevel="WARNING",
        )
        self.thread = threading.Thread(target=self.controller.start, daemon=True, name=f"llmk-{name}-worker")

    def start(self) -> InProcessWorker:
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.controller.stop(in_sighandler=False)
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("the %s worker did not stop within %.0f s", self.thread.name, timeout)
