"""The optimizer tier's contract: the jobs client the composition root's factory hands out keeps the same
records and raises the same llmk errors whether the optimizer runs in this process or behind its gRPC
service (tests/contract/conftest.py runs every test with both), over SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.optim import OptimizerSpec
from llmk.domain.task_spec import TaskSpec
from llmk.errors import FailedPrecondition, InvalidInput, LlmkError, NotFound
from llmk.platform.queue_workers import InProcessWorker
from services.optimizer.interface import (
    CANCELLED,
    COMPLETED,
    PENDING,
    Example,
    Job,
    JobsClient,
    JobSpec,
)
from services.optimizer.main import build, wire
from services.store.adapters.importers import Imported

MODEL = "tiny"
TASK = TaskSpec(labels=("yes", "no"), template="Question: {text}\nAnswer:")
SPEC = JobSpec(model=MODEL, task=TASK, steps=2, batch_size=4, topk=0.05, optimizer=OptimizerSpec(lr=1e-2))


def examples(n: int, offset: int = 0) -> list[Example]:
    return [Example(text=f"is {i} odd?", label="yes" if i % 2 else "no") for i in range(offset, offset + n)]


@dataclass
class Optimizer:
    jobs: JobsClient
    head: int  # the model's version before any job ran


@pytest.fixture
def optimizer(transport: str, settings: Settings, llama_tiny: Imported) -> Iterator[Optimizer]:
    """The jobs client from Deployment.jobs, with a job worker; for gRPC, after starting the service."""
    settings = settings.model_copy(update={"optimizer_queue": f"optimizer-{uuid.uuid4().hex[:8]}"})
    store = Deployment(settings).store()
    t = llama_tiny
    head = store.create_model(MODEL, t.tensors, t.config, t.files).id
    store.close()
    if transport == "local":
        with Deployment(settings).jobs(worker=True) as jobs:
            yield Optimizer(jobs, head)
        return
    runtime = wire(Deployment(settings))
    server, port = build(runtime)
    server.start()
    worker = InProcessWorker(runtime.app, settings.optimizer_queue).start()
    try:
        with Deployment(
            settings.model_copy(update={"optimizer_address": f"127.0.0.1:{port}"})
        ).jobs() as jobs:
            yield Optimizer(jobs, head)
    finally:
        worker.stop()
        server.stop(0).wait()
        runtime.close()


def wait_done(jobs: JobsClient, job_id: str, timeout: float = 120.0) -> Job:
    deadline = time.monotonic() + timeout
    while not (job := jobs.get_job(job_id)).done:
        assert time.monotonic() < deadline, f"job {job_id} not done after {timeout} s: {job.status}"
        time.sleep(0.05)
    return job


def raised(cls: type[LlmkError], call: object, *args: object) -> LlmkError:
    """The error `call(*args)` raised: exactly `cls` over both transports, in one line."""
    with pytest.raises(cls) as caught:
        call(*args)  # type: ignore[operator]
    assert type(caught.value) is cls
    assert str(caught.value)
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_feedback_job_trains_into_committed_versions(optimizer: Optimizer) -> None:
    jobs = optimizer.jobs
    job = jobs.create_job(SPEC, examples(4, offset=20), idempotency_key="create")
    assert (job.spec, job.status, job.step) == (SPEC, PENDING, 0)
    assert jobs.create_job(SPEC, (), idempotency_key="create").id == job.id  # the key names one job
    first = jobs.submit_feedback(job.id, examples(8), "feedback-1")
    again = jobs.submit_feedback(job.id, examples(8), "feedback-1")
    assert (first.duplicate, again.duplicate, first.input.seq, again.input.seq) == (False, True, 1, 1)
    assert first.input.count == 8

    job = wait_done(jobs, job.id)
    assert job.status == COMPLETED
    assert job.spec == SPEC
    assert job.items == 8
    assert [c.step for c in job.commits] == [1, 2]
    assert all(c.version and c.version > optimizer.head for c in job.commits)
    assert job.baseline is not None
    assert job.metric is not None
    assert jobs.get_job(job.id) == job
    assert [j.id for j in jobs.list_jobs(MODEL)] == [job.id]
    assert jobs.list_jobs("other") == []


def test_a_cancelled_job_takes_no_more_input(optimizer: Optimizer) -> None:
    jobs = optimizer.jobs
    job = jobs.create_job(SPEC)
    assert jobs.cancel_job(job.id).status == CANCELLED == jobs.get_job(job.id).status
    raised(FailedPrecondition, jobs.submit_feedback, job.id, examples(4), "late")


def test_unknown_jobs_and_models_are_not_found(optimizer: Optimizer) -> None:
    jobs, unknown = optimizer.jobs, "0" * 32
    raised(NotFound, jobs.get_job, unknown)
    raised(NotFound, jobs.cancel_job, unknown)
    raised(NotFound, jobs.submit_feedback, unknown, examples(1), "k")
    raised(NotFound, jobs.create_job, JobSpec(model="no-such-model", task=TASK))


def test_bad_input_is_invalid_and_nothing_is_committed(optimizer: Optimizer) -> None:
    jobs = optimizer.jobs
    raised(InvalidInput, jobs.create_job, JobSpec(model=MODEL, task=TASK, trainable=("model.layers.7",)))
    job = jobs.create_job(SPEC)
    raised(InvalidInput, jobs.submit_feedback, job.id, examples(1), "")  # no idempotency key
    up = "model.layers.1.mlp.up_proj.weight"
    raised(InvalidInput, jobs.submit_gradients, job.id, {up: torch.zeros(128, 64)}, "k")  # a feedback job
    error = raised(InvalidInput, jobs.submit_feedback, job.id, [Example(text="fine", label="maybe")], "k")
    assert "maybe" in str(error)
    job = jobs.get_job(job.id)
    assert (job.done, job.items, job.commits, job.error) == (False, 0, [], "")  # refused, nothing changed
