"""The Celery tasks with a real worker (in-memory broker, in-process result backend): answers equal the
Host's, errors come back as llmk errors, and queue callers share the batcher with everyone else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from llmk.bootstrap import Deployment
from llmk.errors import FailedPrecondition, InvalidInput, NotFound
from services.inference.engine.generator import Request
from services.inference.queue import tasks
from services.inference.usecases.host import Host

from .hosting import LABELS, TEXTS, create_tiny, settings_for


@dataclass
class Queue:
    app: Celery
    host: Host


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queue]:
    """One worker for the module: starting and stopping a Celery worker takes seconds."""
    home = tmp_path_factory.mktemp("tasks") / "home"
    settings = settings_for(home, inference_queue=f"inference-{uuid.uuid4().hex[:8]}", max_wait_ms=30.0)
    store = Deployment(settings).local_store()
    create_tiny(store)
    host = Host(settings, store)
    host.load("tiny")
    app = Deployment(settings).inference_queue()
    app.conf.broker_transport_options = {"polling_interval": 0.01}  # the in-memory broker is polled
    tasks.register(app, host)
    with start_worker(
        app, pool="threads", concurrency=4, perform_ping_check=False, queues=[settings.inference_queue]
    ):
        yield Queue(app, host)
    host.close()


def test_the_app_is_configured_for_fair_redelivery(queue: Queue) -> None:
    conf = queue.app.conf
    assert conf.task_acks_late
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_reject_on_worker_lost
    assert conf.task_routes == {"llmk.inference.*": {"queue": conf.task_default_queue}}
    answers_over_amqp = Deployment(settings_for(Path("."), broker_url="amqp://x")).inference_queue()
    assert answers_over_amqp.conf.result_backend == "rpc://"


def test_classify_task_answers_like_the_host(queue: Queue) -> None:
    sent = [queue.app.send_task(tasks.CLASSIFY, kwargs={"texts": [t], "labels": LABELS}) for t in TEXTS]
    answers = [s.get(timeout=30, interval=0.01) for s in sent]
    expected = queue.host.classify(TEXTS, LABELS)
    for answer, scores in zip(answers, expected.results, strict=True):
        assert answer["version"] == 1
        [result] = answer["results"]
        assert result["label"] == scores.label
        assert result["prompt_tokens"] == scores.prompt_tokens
        assert [result["probabilities"][lab] for lab in LABELS] == pytest.approx(
            [scores.probabilities[lab] for lab in LABELS], abs=1e-5
        )
    batches = queue.host.metrics.count("llmk_inference_batch_size_count")
    assert batches < len(TEXTS) + 1  # tasks in flight together shared a forward pass


def test_generate_task_returns_the_whole_answer(queue: Queue) -> None:
    answer = queue.app.send_task(
        tasks.GENERATE, kwargs={"request": {"prompt": "The market", "max_tokens": 6}}
    )
    result = answer.get(timeout=30, interval=0.01)
    expected = queue.host.generate(Request("The market", max_tokens=6)).result()
    assert result["token_ids"] == expected.token_ids
    assert result["text"] == expected.text
    assert (result["version"], result["completion_tokens"], result["finish_reason"]) == (1, 6, "length")


@pytest.mark.parametrize(
    ("name", "kwargs", "error"),
    [
        (tasks.CLASSIFY, {"texts": [""]}, InvalidInput),
        (tasks.CLASSIFY, {"texts": ["x"], "labels": [f"l{i}" for i in range(200)]}, InvalidInput),
        (tasks.CLASSIFY, {"texts": ["x"], "model": "nope"}, NotFound),
        (tasks.GENERATE, {"request": {"prompt": "x", "max_tokens": 10_000}}, InvalidInput),
        (tasks.GENERATE, {"request": {"prompt": "x", "max_tokens": 2}, "version": "7"}, NotFound),
        (tasks.GENERATE, {"request": {"prompt": "x", "colour": "red"}}, InvalidInput),
    ],
)
def test_bad_tasks_fail_with_the_llmk_error(
    queue: Queue, name: str, kwargs: dict, error: type[Exception]
) -> None:
    with pytest.raises(error):
        queue.app.send_task(name, kwargs=kwargs).get(timeout=30, interval=0.01)


def test_a_pinned_version_that_is_not_loaded_fails_its_precondition(queue: Queue) -> None:
    store = queue.host.store
    store.branch("tiny", "experiment")
    norm = store.fetch("tiny", "1", names=["model.norm.weight"])["model.norm.weight"]
    other = store.commit_full("tiny", {"model.norm.weight": norm * 2}, branch="experiment")
    with pytest.raises(FailedPrecondition):
        queue.app.send_task(tasks.CLASSIFY, kwargs={"texts": ["x"], "version": str(other.id)}).get(
            timeout=30, interval=0.01
        )
    assert queue.host.info().version == 1  # the worker follows main
