"""The job runner driven with no queue worker beside it: the embedded optimizer trains on a bounded share
of the cores (its torch threads are set where each job runs; the caller keeps its own)."""

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
