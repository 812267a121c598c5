"""The learning loop across tiers: labelled feedback goes to the optimizer, its job commits a sparse
version, and a running inference worker serves that version without a restart — every answer tagged."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from celery.contrib.testing.worker import start_worker

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.optim import OptimizerSpec
from llmk.domain.task_spec import TaskSpec
from services.inference.usecases.host import Host
from services.optimizer.interface import COMPLETED, Example, JobSpec
from services.optimizer.main import wire
from services.store.adapters.importers import load_source

TASK = TaskSpec(labels=("yes", "no"), template="Question: {text}\nAnswer:")


def examples(n: int, offset: int = 0) -> list[Example]:
    return [Example(text=f"is {i} odd?", label="yes" if i % 2 else "no") for i in range(offset, offset + n)]


def test_feedback_becomes_a_version_the_worker_serves(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        broker_url="memory://",
        optimizer_queue=f"opt-{uuid.uuid4().hex[:8]}",
        version_poll_seconds=0,
        device="cpu",
        max_wait_ms=1.0,
    )
    runtime = wire(Deployment(settings))
    imported = load_source("synthetic:llama-tiny")
    runtime.store.create_model("tiny", imported.tensors, imported.config, imported.files)
    host = Host(settings, runtime.store, Deployment(settings).events())
    host.load("tiny")
    before = host.classify(["is 3 odd?"], list(TASK.labels), TASK.template)
    try:
        with start_worker(
            runtime.app,
            pool="solo",
            perform_ping_check=False,
            queues=[settings.optimizer_queue],
            shutdown_timeout=60,
        ):
            spec = JobSpec(
                model="tiny",
                task=TASK,
                steps=1,
                batch_size=16,
                topk=0.05,
                tolerance=10.0,
                optimizer=OptimizerSpec(lr=1e-2),
            )
            job = runtime.jobs.create_job(spec, validation=examples(8, offset=100))
            submitted = time.monotonic()
            runtime.jobs.submit_feedback(job.id, examples(16), "feedback-1")
            deadline = submitted + 120
            while not runtime.jobs.get_job(job.id).done and time.monotonic() < deadline:
                time.sleep(0.05)
            job = runtime.jobs.get_job(job.id)
            assert job.status == COMPLETED, job.error
            committed = job.commits[-1].version
            while (
                after := host.classify(["is 3 odd?"], list(TASK.labels), TASK.template)
            ).version != committed:
                assert time.monotonic() < deadline, f"worker still on {after.version}, expected {committed}"
                time.sleep(0.02)
    finally:
        host.close()
        runtime.close()
    assert before.version != after.version
    assert before.results[0].probabilities != after.results[0].probabilities
    assert host.info().update_error in ("", None)
