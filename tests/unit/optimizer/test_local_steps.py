"""Two ways a feedback job learns more from each example: deferred steps that move the job's own weights
(each gradient is taken where training has got to, not at the last served version) and rehearsal of
earlier examples beside each new batch. Both must keep the runner's promise: a job resumed by another
worker ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import torch
from jobs_support import TASK, examples

from llmk.domain.optim import OptimizerSpec
from services.optimizer.interface import COMPLETED, JobSpec
from services.optimizer.main import Runtime
from services.optimizer.usecases import examples as example_blobs
from services.optimizer.usecases.training import IDLE, MORE, JobRunner
from services.store.adapters.importers import load_source


def twin(rt: Runtime, model: str, suffix: str) -> str:
    name = f"{model}-{suffix}"
    imported = load_source("synthetic:llama-tiny")
    rt.store.create_model(name, imported.tensors, imported.config, imported.files)
    return name


def spec(model: str, **changes: object) -> JobSpec:
    fields: dict[str, object] = dict(
        model=model, task=TASK, steps=3, batch_size=4, commit_every=2, topk=0.05, local_steps=True
    )
    return JobSpec(**(fields | changes), optimizer=OptimizerSpec(lr=1e-2))  # type: ignore[arg-type]


def start(rt: Runtime, job: JobSpec) -> str:
    created = rt.jobs.create_job(job, validation=examples(4, offset=40))
    rt.jobs.submit_feedback(created.id, examples(8), "data")
    return created.id


def trained(rt: Runtime, model: str, job_id: str) -> dict[str, torch.Tensor]:
    return rt.store.fetch(model, "main", names=sorted(rt.jobs.get_job(job_id).tensors))


def one_step_at_a_time(rt: Runtime, job_id: str) -> None:
    """Each step in a new worker process, as far as the job can tell: nothing cached between steps."""
    while JobRunner(rt.runner.repo, rt.store, rt.runner.blobs, budget_seconds=0).run(job_id).status == MORE:
        pass


def test_local_steps_resume_bit_identical_and_change_what_is_learnt(runtime: Runtime, model: str) -> None:
    reference, stale = twin(runtime, model, "ref"), twin(runtime, model, "stale")
    ref_job = start(runtime, spec(reference))
    assert runtime.runner.run(ref_job).status == IDLE  # uninterrupted, in one worker
    stale_job = start(runtime, spec(stale, local_steps=False))
    assert runtime.runner.run(stale_job).status == IDLE

    job_id = start(runtime, spec(model))
    one_step_at_a_time(runtime, job_id)
    job = runtime.jobs.get_job(job_id)
    assert job.status == COMPLETED, job.error
    assert [c.step for c in job.commits] == [2, 3]
    ours, theirs = trained(runtime, model, job_id), trained(runtime, reference, ref_job)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    # step 2's gradient was taken after step 1's update, not at the served weights as without local steps
    old = trained(runtime, stale, stale_job)
    assert any(not torch.equal(ours[n], old[n]) for n in ours)


def test_each_step_rehearses_earlier_examples_and_a_resumed_job_picks_the_same(
    runtime: Runtime, model: str
) -> None:
    job_id = start(runtime, spec(model, steps=None, commit_every=1, replay=3))
    one_step_at_a_time(runtime, job_id)

    job = runtime.jobs.get_job(job_id)
    assert [c.step for c in job.commits] == [1, 2]
    versions = [runtime.store.version(model, str(c.version)) for c in job.commits]
    assert [v.metadata["examples"] for v in versions] == [4, 4 + 3]  # step 1 has nothing earlier yet
    # another worker draws the same rehearsal for step 2 as the one that committed it...
    again = JobRunner(runtime.runner.repo, runtime.store, runtime.runner.blobs)
    session, _ = again._open(job)
    batch = again._batch(session, job, 1)
    assert batch is not None
    assert example_blobs.digest(example_blobs.encode([e]) for e in batch) == job.commits[1].examples_hash
    # ...and rehearses only examples of earlier steps
    assert batch[:4] == examples(8)[4:]
    assert set(batch[4:]) <= set(examples(4))
