"""A Celery worker on threads of this process: the embedded mode's workers, and `serve optimizer`'s."""

from __future__ import annotations

import logging
import socket
import threading
import uuid

from celery import Celery

log = logging.getLogger("llmk.bus")


class InProcessWorker:
    """A Celery worker on a thread of this process: the embedded mode's worker, and `serve optimizer`'s."""

    def __init__(self, app: Celery, queue: str, concurrency: int = 1, name: str = "worker"):
        # as Celery's own embedded test worker does: task execution and retries on the pool's threads find
        # their app as the process default
        app.set_default()
        self.controller = app.WorkController(
            pool="threads",
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
