"""Stopping the optimizer (SIGTERM) ends the running job's current step within seconds, not its time
budget: the step is persisted, the job stays unfinished, and its message goes back so a worker continues."""

from __future__ import annotations

import time

import pytest
from jobs_support import TASK, examples, wait_step

from llmk.domain.optim import OptimizerSpec
from llmk.platform.queue_workers import InProcessWorker
from services.optimizer.interface import JobSpec
from services.optimizer.main import Runtime, shut_down

pytestmark = pytest.mark.timeout(120)  # without the stop, shutting down waits out a 600 s budget


def test_a_stop_request_ends_the_running_step_and_hands_the_job_back(runtime: Runtime, model: str) -> None:
    runtime.runner.budget_seconds = 600  # without the stop, one task would train for ten minutes
    queue = runtime.deployment.settings.optimizer_queue
    spec = JobSpec(model=model, task=TASK, steps=100_000, batch_size=4, optimizer=OptimizerSpec(lr=1e-3))
    job = runtime.jobs.create_job(spec, validation=examples(4, offset=40))
    worker = InProcessWorker(runtime.app, queue).start()
    runtime.jobs.submit_feedback(job.id, examples(8), "data")
    wait_step(runtime, job.id, 2)
    asked = time.monotonic()
    shut_down(runtime, worker)
    assert time.monotonic() - asked < 10
    stopped = runtime.jobs.get_job(job.id)
    assert not stopped.done
    assert stopped.step >= 2
    runtime.runner.stopping.clear()  # a worker started again continues from the persisted step
    again = InProcessWorker(runtime.app, queue).start()
    try:
        assert wait_step(runtime, job.id, stopped.step + 2).step >= stopped.step + 2
    finally:
        runtime.jobs.cancel_job(job.id)
        again.stop()
