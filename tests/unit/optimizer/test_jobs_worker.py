"""Jobs run end to end on a real Celery worker (memory:// broker): feedback and gradients become sparse,
idempotent, lineage-carrying versions on the serving branch, and the validation gate keeps bad ones off it."""

from __future__ import annotations

import math
import time

import pytest
import torch
from jobs_support import TASK, examples, wait_done, wait_step

from llmk.bootstrap import Deployment
from llmk.domain.optim import OptimizerSpec
from llmk.domain.versions import VersionEvent
from services.optimizer.interface import COMPLETED, JobSpec
from services.optimizer.main import Runtime

UP = "model.layers.1.mlp.up_proj.weight"


def feedback_spec(model: str, **changes: object) -> JobSpec:
    fields: dict[str, object] = dict(
        model=model, task=TASK, steps=3, batch_size=8, topk=0.05, optimizer=OptimizerSpec(lr=1e-2)
    )
    return JobSpec(**(fields | changes))  # type: ignore[arg-type]


@pytest.mark.usefixtures("worker")
def test_feedback_job_commits_sparse_versions_with_lineage(runtime: Runtime, model: str) -> None:
    heard: list[VersionEvent] = []
    unsubscribe = (
        Deployment(runtime.deployment.settings)
        .events()
        .subscribe(lambda event: heard.append(event) if event.model == model else None)
    )
    job = runtime.jobs.create_job(feedback_spec(model), validation=examples(8, offset=100))
    runtime.jobs.submit_feedback(job.id, examples(24), "batch-1")
    job = wait_done(runtime, job.id)
    unsubscribe()

    assert job.status == COMPLETED, job.error
    assert [c.step for c in job.commits] == [1, 2, 3]
    assert all(c.promoted for c in job.commits)
    log = runtime.store.log(model)
    assert [v.id for v in log[:-1]] == [c.version for c in reversed(job.commits)]
    assert job.head_version == log[0].id
    assert job.baseline is not None
    assert job.metric is not None
    for c, v in zip(job.commits, reversed(log[:-1]), strict=True):
        assert v.idempotency_key == f"{job.id}:{c.step}"
        meta = v.metadata
        assert meta["job"] == job.id
        assert meta["step"] == c.step
        assert meta["examples"] == 8
        assert meta["examples_hash"] == c.examples_hash
        assert len(c.examples_hash) == 64
        assert math.isfinite(meta["loss_before"])
        assert math.isfinite(meta["loss_after"])
        for e in runtime.store.version(model, str(v.id)).entries:
            assert e.kind in ("sparse_set", "rows_set")
            assert e.nnz <= math.ceil(0.05 * math.prod(e.shape))
    assert len({c.examples_hash for c in job.commits}) == 3
    assert job.commits[-1].loss_after < job.commits[0].loss_before
    assert [e.version for e in heard] == [c.version for c in job.commits]


@pytest.mark.usefixtures("worker")
def test_committed_values_are_exactly_what_the_job_trained(runtime: Runtime, model: str) -> None:
    """Top-k with error feedback: base + committed entries == the job's values, bit for bit, every step."""
    start = runtime.store.version(model, "main").id
    job = runtime.jobs.create_job(feedback_spec(model, steps=2, topk=0.01, commit_every=1))
    runtime.jobs.submit_feedback(job.id, examples(16), "only")
    job = wait_done(runtime, job.id)
    names = sorted(job.tensors)
    base = runtime.store.fetch(model, str(start), names=names)
    final = runtime.store.fetch(model, "main", names=names)
    changed = sum(int((final[n] != base[n]).sum()) for n in names)
    assert 0 < changed <= sum(c.nnz for c in job.commits)


@pytest.mark.usefixtures("worker")
def test_commit_every_and_low_rank(runtime: Runtime, model: str) -> None:
    job = runtime.jobs.create_job(feedback_spec(model, steps=4, commit_every=2, rank=2, topk=1.0))
    runtime.jobs.submit_feedback(job.id, examples(16), "k")
    job = wait_done(runtime, job.id)
    assert job.status == COMPLETED, job.error
    assert [c.step for c in job.commits] == [2, 4]
    v = runtime.store.version(model, str(job.commits[0].version))
    assert {e.kind for e in v.entries} == {"low_rank"}
    assert v.metadata["examples"] == 16


@pytest.mark.usefixtures("worker")
def test_gradient_pushes_are_accumulated_into_one_step(runtime: Runtime, model: str) -> None:
    spec = JobSpec(
        model=model, kind="gradients", trainable=(UP,), batch_size=2, optimizer=OptimizerSpec("sgd", lr=0.5)
    )
    job = runtime.jobs.create_job(spec)
    before = runtime.store.fetch(model, "main", names=[UP])[UP]
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(before.shape, generator=g)
    indices = torch.tensor([3, 7, 11])
    values = torch.tensor([1.0, -2.0, 4.0])

    first = runtime.jobs.submit_gradients(job.id, {UP: dense}, "push-1", loss=2.0)
    again = runtime.jobs.submit_gradients(job.id, {UP: dense}, "push-1", loss=2.0)
    assert again.duplicate
    assert again.input.seq == first.input.seq
    assert again.job.items == 1
    time.sleep(0.5)
    assert runtime.jobs.get_job(job.id).step == 0  # one push is not a batch yet
    runtime.jobs.submit_gradients(
        job.id, {f"{UP}/indices": indices, f"{UP}/values": values}, "push-2", loss=1.0
    )
    job = wait_step(runtime, job.id, 1)

    sparse = torch.zeros(before.numel()).index_add(0, indices, values).reshape(before.shape)
    expected = before.add((dense + sparse) / 2, alpha=-0.5)
    after = runtime.store.fetch(model, "main", names=[UP])[UP]
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-6)
    assert job.commits[0].loss_before == pytest.approx(1.5)
    runtime.jobs.cancel_job(job.id)


@pytest.mark.usefixtures("worker")
def test_validation_gate_keeps_worse_versions_on_candidate_branches(runtime: Runtime, model: str) -> None:
    """A negative tolerance demands an improvement no step can make: nothing reaches main."""
    start = runtime.store.version(model, "main").id
    spec = feedback_spec(model, steps=2, tolerance=-1.0)
    job = runtime.jobs.create_job(spec, validation=examples(8, offset=50))
    runtime.jobs.submit_feedback(job.id, examples(16), "k")
    job = wait_done(runtime, job.id)
    assert job.status == COMPLETED, job.error
    assert runtime.store.version(model, "main").id == start
    assert job.head_version == start
    refs = {r.name: r.version for r in runtime.store.refs(model)}
    for c in job.commits:
        assert not c.promoted
        assert "worse than its parent" in c.reason
        assert refs[c.branch] == c.version
        assert c.branch.startswith("main-job-")
        assert (
            runtime.store.version(model, str(c.version)).parent == start
        )  # each rejected step starts from main


@pytest.mark.usefixtures("worker")
def test_open_job_steps_as_feedback_arrives_until_cancelled(runtime: Runtime, model: str) -> None:
    job = runtime.jobs.create_job(feedback_spec(model, steps=None, batch_size=4))
    runtime.jobs.submit_feedback(job.id, examples(6), "a")
    assert wait_step(runtime, job.id, 1).step == 1
    runtime.jobs.submit_feedback(job.id, examples(2, offset=6), "b")
    assert wait_step(runtime, job.id, 2).step == 2
    cancelled = runtime.jobs.cancel_job(job.id)
    assert cancelled.status == "cancelled"
    assert len(cancelled.commits) == 2
