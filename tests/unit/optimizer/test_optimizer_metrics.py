"""The optimizer's Prometheus metrics after a job ran on a real Celery worker (memory:// broker)."""

from __future__ import annotations

import time
import urllib.request

import pytest
from jobs_support import TASK, examples, wait_done

from llmk.domain.optim import OptimizerSpec
from services.optimizer.interface import COMPLETED, JobSpec
from services.optimizer.main import Runtime


@pytest.mark.usefixtures("worker")
def test_steps_gate_decisions_loss_and_queue_lag_are_exported(runtime: Runtime, model: str) -> None:
    m = runtime.metrics
    finished = m.count("llmk_optimizer_jobs_finished_total", status=COMPLETED)
    spec = JobSpec(model=model, task=TASK, steps=2, batch_size=8, topk=0.05, optimizer=OptimizerSpec(lr=1e-2))
    job = runtime.jobs.create_job(spec, validation=examples(8, offset=100))
    runtime.jobs.submit_feedback(job.id, examples(16), "batch-1")
    job = wait_done(runtime, job.id)
    assert job.status == COMPLETED, job.error
    # The task counts what it did after the job row says done; the finished count is its last increment.
    deadline = time.monotonic() + 30
    while m.count("llmk_optimizer_jobs_finished_total", status=COMPLETED) <= finished:
        assert time.monotonic() < deadline, "the finished job was never counted"
        time.sleep(0.02)
    assert m.count("llmk_optimizer_steps_total", model=model) == 2
    promoted = sum(c.promoted for c in job.commits)
    assert m.count("llmk_optimizer_gate_decisions_total", model=model, decision="promoted") == promoted
    assert m.count("llmk_optimizer_gate_decisions_total", model=model, decision="held") == 2 - promoted
    assert m.count("llmk_optimizer_loss", model=model, when="after") == job.commits[-1].loss_after
    assert m.count("llmk_optimizer_queue_lag_seconds_count") >= 1

    port = m.serve(0)
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'llmk_optimizer_steps_total{{model="{model}"}} 2.0' in page
