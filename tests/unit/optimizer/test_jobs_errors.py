"""Every bad input gets a clear error, the job's state says why, and nothing is committed."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from jobs_support import TASK, examples

from llmk.domain.optim import OptimizerSpec
from llmk.domain.task_spec import TaskSpec
from llmk.errors import FailedPrecondition, Frozen, InvalidInput, LlmkError, NotFound
from services.optimizer.interface import CANCELLED, FAILED, Example, JobSpec
from services.optimizer.main import Runtime

UP = "model.layers.1.mlp.up_proj.weight"
Parts = Callable[[], dict[str, torch.Tensor]]


def feedback_job(rt: Runtime, model: str, **changes: object) -> str:
    fields: dict[str, object] = dict(model=model, task=TASK, steps=1, batch_size=4)
    return rt.jobs.create_job(JobSpec(**(fields | changes))).id  # type: ignore[arg-type]


def gradients_job(rt: Runtime, model: str, lr: float = 0.1) -> str:
    spec = JobSpec(
        model=model, kind="gradients", trainable=(UP,), batch_size=1, optimizer=OptimizerSpec("sgd", lr)
    )
    return rt.jobs.create_job(spec).id


def assert_failed_without_commit(rt: Runtime, model: str, job_id: str, reason: str) -> None:
    job = rt.jobs.get_job(job_id)
    assert job.status == FAILED
    assert reason in job.error
    assert job.commits == []
    assert len(rt.store.log(model)) == 1


def test_a_job_for_an_unknown_model_fails_and_says_why(runtime: Runtime) -> None:
    with pytest.raises(NotFound, match="unknown model 'no-such-model'"):
        runtime.jobs.create_job(JobSpec(model="no-such-model", task=TASK))
    [job] = runtime.jobs.list_jobs("no-such-model")
    assert job.status == FAILED
    assert "unknown model" in job.error


def test_trainable_patterns_never_select_frozen_tensors(runtime: Runtime, model: str) -> None:
    runtime.store.freeze(model, ["model.layers.1.mlp"])
    with pytest.raises(Frozen, match=r"frozen tensor.*model\.layers\.1\.mlp"):
        runtime.jobs.create_job(JobSpec(model=model, task=TASK))  # default: the last two layers' MLPs
    [job] = runtime.jobs.list_jobs(model)
    assert job.status == FAILED
    assert "frozen" in job.error
    assert len(runtime.store.log(model)) == 1


def test_a_trainable_pattern_must_match_something(runtime: Runtime, model: str) -> None:
    with pytest.raises(InvalidInput, match=r"'model\.layers\.7' matches no tensor"):
        runtime.jobs.create_job(JobSpec(model=model, task=TASK, trainable=("model.layers.7",)))


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            [*examples(3), Example(text="fine", label="maybe")],
            "label 'maybe', which is not in the task's label",
        ),
        ([], "empty batch"),
        ([Example(text="", label="yes")], "has no text"),
    ],
    ids=["label-outside-set", "empty-batch", "no-text"],
)
def test_bad_feedback_is_refused_and_changes_nothing(
    runtime: Runtime, model: str, batch: list[Example], message: str
) -> None:
    job_id = feedback_job(runtime, model)
    with pytest.raises(InvalidInput, match=message):
        runtime.jobs.submit_feedback(job_id, batch, "k")
    job = runtime.jobs.get_job(job_id)
    assert (job.done, job.error, job.items, job.commits) == (False, "", 0, [])
    assert not runtime.jobs.submit_feedback(job_id, examples(4), "k").duplicate  # the key was not used


def _zeros(name: str, *shape: int) -> Parts:
    return lambda: {name: torch.zeros(shape)}


@pytest.mark.parametrize(
    ("parts", "error", "message"),
    [
        (_zeros(UP, 3, 3), InvalidInput, "has shape (3, 3); the tensor has (128, 64)"),
        (_zeros("model.layers.9.mlp.up_proj.weight", 128, 64), InvalidInput, "unknown tensor"),
        (_zeros("model.layers.0.mlp.up_proj.weight", 128, 64), InvalidInput, "not trainable in job"),
        (_zeros("model.norm.weight", 64), Frozen, "gradient for frozen tensor(s) model.norm.weight"),
        (lambda: {UP: torch.full((128, 64), float("nan"))}, InvalidInput, "NaN or Inf"),
        (
            lambda: {f"{UP}/indices": torch.tensor([9_999_999]), f"{UP}/values": torch.ones(1)},
            InvalidInput,
            "fall outside",
        ),
        (lambda: {f"{UP}/indices": torch.tensor([1])}, InvalidInput, "needs both"),
        (dict, InvalidInput, "empty batch"),
    ],
    ids=["shape", "unknown-tensor", "not-trainable", "frozen", "nan", "index-range", "half-sparse", "empty"],
)
def test_bad_gradients_fail_the_job(
    runtime: Runtime, model: str, parts: Parts, error: type[LlmkError], message: str
) -> None:
    runtime.store.freeze(model, ["model.norm"])
    job_id = gradients_job(runtime, model)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        runtime.jobs.submit_gradients(job_id, parts(), "k")
    assert_failed_without_commit(runtime, model, job_id, message)


def test_a_non_finite_loss_fails_the_job_with_nothing_committed(runtime: Runtime, model: str) -> None:
    huge = {"model.norm.weight": torch.full((64,), 3e38)}  # finite, but the forward pass overflows
    start = runtime.store.commit_full(model, huge).id
    job_id = feedback_job(runtime, model)
    runtime.jobs.submit_feedback(job_id, examples(4), "k")
    runtime.runner.run(job_id)
    job = runtime.jobs.get_job(job_id)
    assert job.status == FAILED
    assert "step 1: the loss is nan" in job.error
    assert runtime.store.version(model, "main").id == start
    assert job.commits == []


def test_an_update_that_overflows_fails_the_job_with_nothing_committed(runtime: Runtime, model: str) -> None:
    job_id = gradients_job(runtime, model, lr=1e30)
    runtime.jobs.submit_gradients(job_id, {UP: torch.full((128, 64), 1e10)}, "k")
    runtime.runner.run(job_id)
    assert_failed_without_commit(runtime, model, job_id, "NaN or Inf")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m: JobSpec(model=m, task=TASK, optimizer=OptimizerSpec(lr=-1.0)), "lr must be"),
        (lambda m: JobSpec(model=m, task=TASK, topk=0.0), "topk must be in"),
        (lambda m: JobSpec(model=m, task=TaskSpec(labels=("only",))), "at least 2 labels"),
        (lambda m: JobSpec(model=m, task=TaskSpec(labels=("a", "b"), template="no slot")), "must contain"),
        (lambda m: JobSpec(model=m), "needs a task"),
        (lambda m: JobSpec(model=m, kind="gradients"), "must name its trainable"),
        (lambda m: JobSpec(model=m, task=TASK, replay=-1), "replay must be an integer >= 0"),
        (lambda m: JobSpec(model=m, task=TASK, replay=True), "replay must be an integer >= 0"),
        (lambda m: JobSpec(model=m, task=TASK, local_steps="yes"), "local_steps must be true or false"),  # type: ignore[arg-type]
        (
            lambda m: JobSpec(model=m, kind="gradients", trainable=("x",), replay=4),
            "apply to jobs that learn from examples",
        ),
    ],
    ids=[
        "lr",
        "topk",
        "labels",
        "template",
        "no-task",
        "no-trainable",
        "replay<0",
        "replay-bool",
        "local",
        "replay-grads",
    ],
)
def test_a_bad_job_spec_is_refused_before_anything_is_stored(
    runtime: Runtime, model: str, build: Callable[[str], JobSpec], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        runtime.jobs.create_job(build(model))
    assert runtime.jobs.list_jobs(model) == []


def test_submissions_need_a_known_job_of_the_right_kind_and_a_key(runtime: Runtime, model: str) -> None:
    with pytest.raises(NotFound, match="unknown job"):
        runtime.jobs.submit_feedback("0" * 32, examples(1), "k")
    job_id = feedback_job(runtime, model)
    with pytest.raises(InvalidInput, match="idempotency key"):
        runtime.jobs.submit_feedback(job_id, examples(1), "")
    with pytest.raises(InvalidInput, match="does not take gradients"):
        runtime.jobs.submit_gradients(job_id, {UP: torch.zeros(128, 64)}, "k")
    assert runtime.jobs.cancel_job(job_id).status == CANCELLED
    with pytest.raises(FailedPrecondition, match="is cancelled"):
        runtime.jobs.submit_feedback(job_id, examples(1), "k2")
