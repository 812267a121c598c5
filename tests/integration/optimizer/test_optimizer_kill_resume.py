"""A Celery worker SIGKILLed in the middle of a job (RabbitMQ + PostgreSQL): the message comes back, a new
worker resumes the job from its last persisted step, and every step is committed exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.optim import OptimizerSpec
from llmk.domain.task_spec import TaskSpec
from services.optimizer.interface import COMPLETED, Example, Job, JobSpec
from services.optimizer.main import Runtime, wire
from services.store.adapters.importers import load_source

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[3]
STEPS, KILL_AT = 12, 3
TASK = TaskSpec(labels=("yes", "no"), template="Question: {text}\nAnswer:")


@pytest.fixture
def runtime(tmp_path: Path, postgres_url: str, amqp_url: str) -> Iterator[Runtime]:
    settings = Settings(
        home=tmp_path,
        database_url=postgres_url,
        broker_url=amqp_url,
        optimizer_queue=f"optimizer-it-{uuid.uuid4().hex[:8]}",  # a queue no other test run consumes
        optimizer_lease_seconds=3,
    )
    rt = wire(Deployment(settings))
    imported = load_source("synthetic:llama-tiny")
    rt.store.create_model("tiny", imported.tensors, imported.config, imported.files)
    yield rt
    rt.close()
    with rt.app.connection() as conn:
        conn.default_channel.queue_delete(settings.optimizer_queue)


def start_worker(rt: Runtime, log: Path) -> subprocess.Popen[bytes]:
    s = rt.deployment.settings
    env = os.environ | {
        "LLMK_HOME": str(s.home),
        "LLMK_DATABASE_URL": s.database_url,
        "LLMK_BROKER_URL": s.broker_url,
        "LLMK_OPTIMIZER_QUEUE": s.optimizer_queue,
        "LLMK_OPTIMIZER_LEASE_SECONDS": str(s.optimizer_lease_seconds),
        "HF_HUB_OFFLINE": "1",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "llmk.cli.main", "serve", "optimizer", "--queue-only"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=out,
        )


def wait_for(rt: Runtime, job_id: str, done: bool, step: int = 0, timeout: float = 150) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = rt.jobs.get_job(job_id)
        if job.done or (not done and job.step >= step):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} stuck at step {rt.jobs.get_job(job_id).step}")


def test_a_killed_worker_s_job_resumes_and_commits_each_step_once(runtime: Runtime, tmp_path: Path) -> None:
    spec = JobSpec(
        model="tiny", task=TASK, steps=STEPS, batch_size=4, topk=0.02, optimizer=OptimizerSpec(lr=1e-2)
    )
    job = runtime.jobs.create_job(spec)
    runtime.jobs.submit_feedback(
        job.id, [Example(f"is {i} odd?", "yes" if i % 2 else "no") for i in range(16)], "k"
    )

    log = tmp_path / "workers.log"
    first = start_worker(runtime, log)
    try:
        killed_at = wait_for(runtime, job.id, done=False, step=KILL_AT).step
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        first.kill()
    assert killed_at < STEPS, "the job finished before the worker could be killed"

    second = start_worker(runtime, log)
    try:
        job = wait_for(runtime, job.id, done=True)
    finally:
        second.terminate()
        second.wait(30)
    assert job.status == COMPLETED, f"{job.error}\n{log.read_text()[-3000:]}"
    assert [c.step for c in job.commits] == list(range(1, STEPS + 1))
    history = [v for v in runtime.store.log("tiny") if v.metadata.get("job") == job.id]
    assert sorted(v.metadata["step"] for v in history) == list(range(1, STEPS + 1))  # once each
    assert {v.idempotency_key for v in history} == {f"{job.id}:{s}" for s in range(1, STEPS + 1)}
    assert [c.version for c in job.commits] == [v.id for v in reversed(history)]
