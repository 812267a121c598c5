"""The job runner driven step by step, with no queue worker beside it: its torch threads (the embedded
optimizer trains on a bounded share of the cores) and where deferred steps leave the job's weights."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from jobs_support import TASK, examples

from llmk.bootstrap import Deployment, embedded
from llmk.config import Settings
from llmk.domain.optim import OptimizerSpec
from services.optimizer.interface import JobSpec
from services.optimizer.main import Runtime, wire
from services.store.adapters.importers import load_source


def test_embedded_jobs_train_on_one_thread_and_leave_the_callers_threads_alone(tmp_path: Path) -> None:
    settings = embedded(Settings(), tmp_path)
    assert settings.optimizer_threads == 1
    assert embedded(Settings(optimizer_threads=2), tmp_path).optimizer_threads == 2  # the user's choice wins
    rt = wire(Deployment(settings))
    try:
        imported = load_source("synthetic:llama-tiny")
        rt.store.create_model("tiny", imported.tensors, imported.config, imported.files)
        spec = JobSpec(model="tiny", task=TASK, steps=1, batch_size=4, optimizer=OptimizerSpec(lr=1e-3))
        job = rt.jobs.create_job(spec, validation=examples(4, offset=50))
        rt.jobs.submit_feedback(job.id, examples(4), "batch-1")
        seen: list[int] = []
        before = torch.get_num_threads()

        def work() -> None:
            rt.runner.run(job.id)
            seen.append(torch.get_num_threads())

        worker = threading.Thread(target=work)
        worker.start()
        worker.join(120)
        assert seen == [1]
        assert rt.jobs.get_job(job.id).step == 1
        assert torch.get_num_threads() == before
    finally:
        rt.close()


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = wire(Deployment(embedded(Settings(), tmp_path)))
    imported = load_source("synthetic:llama-tiny")
    rt.store.create_model("tiny", imported.tensors, imported.config, imported.files)
    yield rt
    rt.close()


def test_deferred_steps_move_the_jobs_weights_and_versions_commit_from_the_served_ones(
    runtime: Runtime,
) -> None:
    """Between commits the job trains at the weights its deferred steps reached (not at the last version);
    a commit starts from the served values, so what the store serves is still exactly what the job holds."""
    head = runtime.store.version("tiny", "main").id
    job = runtime.jobs.create_job(
        JobSpec(
            model="tiny", task=TASK, steps=2, batch_size=8, commit_every=2, optimizer=OptimizerSpec(lr=1e-2)
        )
    )
    runtime.jobs.submit_feedback(job.id, examples(16), "local")
    names = sorted(job.tensors)
    served = runtime.store.fetch("tiny", str(head), names=names)
    runner = runtime.runner
    runner.budget_seconds = 0.0  # one step per run
    runner.run(job.id)
    session = runner._session
    assert session is not None
    assert session.served is not None
    assert all(torch.equal(session.served[n], served[n]) for n in names)
    assert any(not torch.equal(session.params[n], served[n]) for n in names)  # moved by step 1
    assert runtime.store.version("tiny", "main").id == head  # and nothing committed yet
    runner.run(job.id)
    committed = runtime.store.fetch("tiny", "main", names=names)
    assert runtime.jobs.get_job(job.id).commits[0].step == 2
    assert all(torch.equal(session.params[n], committed[n]) for n in names)
