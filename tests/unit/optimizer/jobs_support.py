"""Helpers shared by the optimizer job tests: example data and waiting for a job."""

from __future__ import annotations

import time

from llmk.domain.task_spec import TaskSpec
from services.optimizer.interface import Example, Job
from services.optimizer.main import Runtime

TASK = TaskSpec(labels=("yes", "no"), template="Question: {text}\nAnswer:")


def examples(n: int, offset: int = 0) -> list[Example]:
    return [Example(text=f"is {i} odd?", label="yes" if i % 2 else "no") for i in range(offset, offset + n)]


def wait_done(rt: Runtime, job_id: str, timeout: float = 120.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rt.jobs.get_job(job_id)
        if job.done:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {rt.jobs.get_job(job_id)}")


def wait_step(rt: Runtime, job_id: str, step: int, timeout: float = 60.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rt.jobs.get_job(job_id)
        if job.step >= step or job.done:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach step {step} in {timeout} s")
