"""Thumbs through POST /v1/feedback train the served model: they feed its standing replies job, whose
gated version the gateway then serves; refused feedback queues nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llmk.bootstrap import Deployment
from services.optimizer.interface import REPLIES, Job, JobsClient
from services.store.adapters.importers import Imported
from tests.e2e.support.conftest import MODEL, Api, api_settings, import_tiny, in_process, serve, stop


@pytest.fixture
def learning(tmp_path: Path, llama_tiny: Imported) -> Iterator[tuple[Api, JobsClient]]:
    """A gateway whose feedback goes to an embedded optimizer (two rated replies per step)."""
    settings = api_settings(tmp_path / "home", reply_batch_size=2, reply_holdout=2)
    version = import_tiny(settings, llama_tiny)
    with Deployment(settings).jobs(worker=True) as jobs:
        api, running = serve(settings, in_process(settings), version, jobs=jobs)
        yield api, jobs
        stop(api, running)


def reply_job(jobs: JobsClient) -> Job | None:
    found = [j for j in jobs.list_jobs(MODEL) if j.spec.kind == REPLIES]
    return found[0] if found else None


def ask(client: openai.OpenAI, text: str) -> str:
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=4, temperature=0
    )
    return answer.id


def test_thumbs_and_corrections_become_a_served_version(learning: tuple[Api, JobsClient]) -> None:
    api, jobs = learning
    client = openai.OpenAI(base_url=api.base_url, api_key="unused", max_retries=0)
    first, second = ask(client, "where is my parcel"), ask(client, "cancel my order")
    assert httpx.post(api.base_url + "/feedback", json={"id": first, "rating": "up"}).status_code == 200
    body = {"id": second, "rating": "down", "correction": "i have cancelled it"}
    assert httpx.post(api.base_url + "/feedback", json=body).status_code == 200

    job = reply_job(jobs)
    assert job is not None
    assert job.items == 3  # the up-rated reply, the down-rated one and its correction
    deadline = time.monotonic() + 120
    while not (job := jobs.get_job(job.id)).commits and time.monotonic() < deadline:
        time.sleep(0.2)
    commit = job.commits[0]
    assert commit.promoted, commit.reason
    assert commit.metric is not None
    while api.support.health().version != commit.version and time.monotonic() < deadline:
        time.sleep(0.2)
    served = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=2
    )
    assert served.system_fingerprint is not None
    assert served.system_fingerprint.endswith(str(commit.version))


def test_refused_feedback_queues_nothing(learning: tuple[Api, JobsClient]) -> None:
    api, jobs = learning
    client = openai.OpenAI(base_url=api.base_url, api_key="unused", max_retries=0)
    unknown = httpx.post(api.base_url + "/feedback", json={"id": "chatcmpl-nope", "rating": "up"})
    assert unknown.status_code == 404
    answer = ask(client, "hello")
    bad = httpx.post(api.base_url + "/feedback", json={"id": answer, "rating": "meh"})
    assert bad.status_code == 400
    assert reply_job(jobs) is None
    assert httpx.post(api.base_url + "/feedback", json={"id": answer, "rating": "up"}).status_code == 200
    twice = httpx.post(api.base_url + "/feedback", json={"id": answer, "rating": "down"})
    assert twice.status_code == 409
    job = reply_job(jobs)
    assert job is not None
    assert job.items == 1
