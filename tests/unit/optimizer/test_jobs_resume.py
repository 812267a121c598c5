"""A job resumes from its persisted step: a worker lost at any point neither repeats nor skips a commit,
and the result is bit-identical to an uninterrupted run."""

from __future__ import annotations

import torch
from jobs_support import TASK, examples

from llmk.domain.optim import OptimizerSpec
from services.optimizer.interface import COMPLETED, JobSpec
from services.optimizer.main import Runtime
from services.optimizer.usecases.training import BUSY, IDLE, MORE, JobRunner
from services.store.adapters.importers import load_source

STEPS = 3


def start_job(rt: Runtime, model: str) -> str:
    spec = JobSpec(
        model=model, task=TASK, steps=STEPS, batch_size=4, topk=0.02, optimizer=OptimizerSpec(lr=1e-2)
    )
    job = rt.jobs.create_job(spec, validation=examples(4, offset=40))
    rt.jobs.submit_feedback(job.id, examples(8), "data")
    return job.id


def fresh_runner(rt: Runtime) -> JobRunner:
    """A new worker process, as far as the job can tell: nothing cached, one step per run."""
    return JobRunner(rt.runner.repo, rt.store, rt.runner.blobs, lease_seconds=30, budget_seconds=0)


def trained(rt: Runtime, model: str, job_id: str) -> dict[str, torch.Tensor]:
    return rt.store.fetch(model, "main", names=sorted(rt.jobs.get_job(job_id).tensors))


def test_a_step_committed_just_before_a_crash_is_not_committed_again(runtime: Runtime, model: str) -> None:
    twin = f"{model}-twin"
    imported = load_source("synthetic:llama-tiny")
    runtime.store.create_model(twin, imported.tensors, imported.config, imported.files)
    reference = start_job(runtime, twin)
    assert runtime.runner.run(reference).status == IDLE  # uninterrupted, in one go

    job_id = start_job(runtime, model)
    assert fresh_runner(runtime).run(job_id).status == MORE
    before = runtime.jobs.get_job(job_id)
    assert before.step == 1
    assert before.state_object is not None
    with runtime.runner.blobs.open_tensors(before.state_object) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert fresh_runner(runtime).run(job_id).status == MORE
    committed = runtime.store.version(model, "main")
    assert committed.metadata["step"] == 2

    # the worker died after the store took step 2 but before the job row moved: put the row back
    runtime.runner.blobs.put_tensors(state)
    repo = runtime.runner.repo
    assert repo.acquire(job_id, "crashed-worker", 30) == 0
    repo.update(
        job_id,
        "crashed-worker",
        2,
        step=1,
        state_object=before.state_object,
        commits=before.commits,
        head_version=before.head_version,
        metric=before.metric,
    )
    repo.release(job_id, "crashed-worker")

    while fresh_runner(runtime).run(job_id).status == MORE:
        pass
    job = runtime.jobs.get_job(job_id)
    assert job.status == COMPLETED, job.error
    assert [c.step for c in job.commits] == [1, 2, 3]
    assert job.commits[1].version == committed.id
    steps = [int(v.metadata["step"]) for v in runtime.store.log(model)[:-1]]
    assert sorted(steps) == [1, 2, 3]  # each step committed exactly once
    ours, theirs = trained(runtime, model, job_id), trained(runtime, twin, reference)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def test_a_job_leased_by_another_worker_is_left_alone(runtime: Runtime, model: str) -> None:
    job_id = start_job(runtime, model)
    assert runtime.runner.repo.acquire(job_id, "someone-else", 30) == 0
    result = fresh_runner(runtime).run(job_id)
    assert result.status == BUSY
    assert 29 < result.retry_in <= 30
    assert runtime.jobs.get_job(job_id).step == 0
    runtime.runner.repo.release(job_id, "someone-else")
    assert fresh_runner(runtime).run(job_id).status == MORE
