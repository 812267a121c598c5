"""The optimizer's one Celery task. Tasks hold serialization, retries and acks; the work is
JobRunner.run, which persists every step, so a redelivered or retried task simply resumes the job.

Acks are late (a worker killed mid-job leaves the message to be redelivered) and a worker takes one message
at a time. A job leased by another worker is looked at again when that lease would lapse; a job that used
its time budget continues in a fresh message, so no delivery stays unacknowledged for long.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from sqlalchemy.exc import OperationalError

from llmk.errors import Unavailable
from services.optimizer.usecases.metrics import SENT_AT, Metrics
from services.optimizer.usecases.training import BUSY, MORE, JobRunner

log = logging.getLogger("llmk.optimizer")
RUN_JOB = "llmk.optimizer.run_job"
TRANSIENT = (Unavailable, OperationalError, ConnectionError)


class JobTask(Task):
    """Marks the job failed when its task gives up for good (retries spent, or an unexpected error)."""

    fail_job: Callable[[str, str], Any]

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        self.fail_job(args[0], f"the optimizer worker gave up on this job: {exc!r}")


def register_tasks(
    app: Celery, runner: JobRunner, fail_job: Callable[[str, str], Any], metrics: Metrics | None = None
) -> Task:
    metrics = metrics or Metrics()

    @app.task(
        name=RUN_JOB,
        shared=False,  # bound to this app's runner; a shared task would reach every later app too
        bind=True,
        base=JobTask,
        fail_job=fail_job,
        acks_late=True,
        autoretry_for=TRANSIENT,
        retry_backoff=True,
        retry_backoff_max=60,
        max_retries=20,
    )
    def run_job(self: Task, job_id: str) -> str:
        metrics.waited(self.request)
        with metrics.running(runner.repo.get, job_id):
            result = runner.run(job_id)
        if result.status == BUSY:  # another worker holds the job; look again when its lease would lapse
            self.apply_async((job_id,), countdown=result.retry_in + 0.1, headers=sent_now())
        elif result.status == MORE:
            self.apply_async((job_id,), headers=sent_now())
        return result.status

    return run_job


def scheduler(app: Celery, queue: str) -> Callable[[str], None]:
    def schedule(job_id: str) -> None:
        app.send_task(RUN_JOB, (job_id,), queue=queue, headers=sent_now())

    return schedule


def sent_now() -> dict[str, float]:
    """The header the optimizer's metrics read the queue lag from."""
    return {SENT_AT: time.time()}
