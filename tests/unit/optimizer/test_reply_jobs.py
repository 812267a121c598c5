"""A replies job learns from thumbs on a real Celery worker: after its versions, up-rated replies (and
corrections) are more likely and down-rated ones less likely than under the version that wrote them, every
version passes the held-out reply gate before the branch moves, and bad reply examples are refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
from jobs_support import wait_done

from llmk.domain.optim import OptimizerSpec
from llmk.errors import InvalidInput
from services.optimizer.interface import COMPLETED, DOWN, REPLIES, UP, Example, JobSpec, reply_example
from services.optimizer.main import Runtime
from services.optimizer.usecases.replies import load_reply_trainer

GOOD = "i have cancelled it"
BAD = "zzzz qqqq"


def rated(n: int, offset: int = 0) -> list[Example]:
    """Customers asking about orders; the helpful reply up-rated, the gibberish one down-rated."""
    out = []
    for i in range(offset, offset + n):
        turns = [("user", f"please cancel order {i}")]
        out.append(reply_example(turns, GOOD, UP) if i % 2 else reply_example(turns, BAD, DOWN))
    return out


def reply_spec(model: str, **changes: object) -> JobSpec:
    fields: dict[str, object] = dict(
        model=model, kind=REPLIES, steps=4, batch_size=8, topk=0.25, optimizer=OptimizerSpec(lr=3e-3)
    )
    return JobSpec(**(fields | changes))  # type: ignore[arg-type]


def mean_logprob(runtime: Runtime, model: str, ref: str, examples: list[Example]) -> float:
    trainer = load_reply_trainer(runtime.store, model, ref)
    return trainer.evaluate(examples)


@pytest.mark.usefixtures("worker")
def test_up_rated_replies_rise_and_down_rated_fall(runtime: Runtime, model: str) -> None:
    start = str(runtime.store.version(model).id)
    held_out = [e for e in rated(8, offset=100) if e.rating == UP]
    job = runtime.jobs.create_job(reply_spec(model), validation=held_out)
    runtime.jobs.submit_feedback(job.id, rated(32), "thumbs-1")
    job = wait_done(runtime, job.id)

    assert job.status == COMPLETED, job.error
    assert [c.step for c in job.commits] == [1, 2, 3, 4]
    assert all(c.promoted for c in job.commits), [c.reason for c in job.commits]
    assert job.head_version == runtime.store.version(model).id
    assert job.metric is not None
    assert job.baseline is not None
    assert job.metric > job.baseline
    up = [e for e in rated(8, offset=200) if e.rating == UP]
    # evaluate() scores up-rated replies: the down-rated ones re-labelled up, to read their likelihood
    down = [replace(e, rating=UP) for e in rated(8, offset=200) if e.rating == DOWN]
    head = str(job.head_version)
    assert mean_logprob(runtime, model, head, up) > mean_logprob(runtime, model, start, up) + 0.05
    assert mean_logprob(runtime, model, head, down) < mean_logprob(runtime, model, start, down) - 0.05


@pytest.mark.parametrize(
    ("example", "says"),
    [
        (Example(prompt="plain text", completion="x", rating=UP), "JSON turns"),
        (Example(prompt='[{"role": "robot", "content": "hi"}]', completion="x", rating=UP), "role in"),
        (Example(prompt='[{"role": "assistant", "content": "hi"}]', completion="x", rating=UP), "end with"),
        (reply_example([("user", "hi")], "", UP), "empty reply"),
        (reply_example([("user", "hi")], "hello", "meh"), "rating must be"),
    ],
)
def test_bad_reply_examples_are_refused_and_nothing_is_queued(
    runtime: Runtime, model: str, example: Example, says: str
) -> None:
    job = runtime.jobs.create_job(reply_spec(model, steps=None))
    with pytest.raises(InvalidInput, match=says):
        runtime.jobs.submit_feedback(job.id, [*rated(3), example], "bad")
    assert runtime.jobs.get_job(job.id).items == 0
