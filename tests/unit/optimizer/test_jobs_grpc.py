"""The Optimizer gRPC service: the client's calls reach the same use cases, errors keep their class, and
mutating calls need the token when one is set."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from jobs_support import TASK, examples

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.optim import OptimizerSpec
from llmk.errors import InvalidInput, NotFound, Unauthenticated
from services.optimizer.interface import CANCELLED, COMPLETED, FAILED, Example, Job, JobSpec
from services.optimizer.main import Runtime, build, wire
from services.optimizer.rpc.client import GrpcOptimizerClient
from services.store.adapters.importers import load_source
from services.store.main import build as build_store
from services.store.rpc.client import GrpcStoreClient

UP = "model.layers.1.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def client(runtime: Runtime) -> Iterator[GrpcOptimizerClient]:
    server, port = build(runtime)
    server.start()
    c = GrpcOptimizerClient(f"127.0.0.1:{port}", chunk_bytes=4096)  # small chunks: many per tensor
    yield c
    c.close()
    server.stop(0)


def poll(client: GrpcOptimizerClient, job_id: str, until: str = "done", timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.done if until == "done" else job.step >= 1:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not {until} after {timeout} s")


@pytest.mark.usefixtures("worker")
def test_feedback_job_over_grpc(client: GrpcOptimizerClient, model: str) -> None:
    spec = JobSpec(model=model, task=TASK, steps=2, batch_size=4, topk=0.05, optimizer=OptimizerSpec(lr=1e-2))
    job = client.create_job(spec, examples(4, offset=20), idempotency_key=f"create-{model}")
    assert client.create_job(spec, (), idempotency_key=f"create-{model}").id == job.id
    first = client.submit_feedback(job.id, examples(8), "feedback-1")
    again = client.submit_feedback(job.id, examples(8), "feedback-1")
    assert not first.duplicate
    assert again.duplicate
    assert again.input.seq == first.input.seq == 1
    job = poll(client, job.id)
    assert job.status == COMPLETED
    assert job.spec == spec
    assert [c.step for c in job.commits] == [1, 2]
    assert all(c.version for c in job.commits)
    assert job.baseline is not None
    assert job.metric is not None
    assert [j.id for j in client.list_jobs(model)] == [job.id]


@pytest.mark.usefixtures("worker")
def test_gradients_stream_in_chunks(client: GrpcOptimizerClient, runtime: Runtime, model: str) -> None:
    spec = JobSpec(
        model=model, kind="gradients", trainable=(UP,), batch_size=1, optimizer=OptimizerSpec("sgd", lr=0.1)
    )
    job = client.create_job(spec)
    before = runtime.store.fetch(model, "main", names=[UP])[UP]
    grad = torch.randn(before.shape, generator=torch.Generator().manual_seed(1))
    client.submit_gradients(job.id, {UP: grad}, "push-1", loss=0.5)
    job = poll(client, job.id, until="step")
    assert job.commits[0].loss_before == 0.5
    torch.testing.assert_close(runtime.store.fetch(model, "main", names=[UP])[UP], before - 0.1 * grad)
    assert client.cancel_job(job.id).status == CANCELLED


def test_errors_keep_their_class_over_grpc(client: GrpcOptimizerClient, model: str) -> None:
    with pytest.raises(NotFound, match="unknown job"):
        client.get_job("f" * 32)
    with pytest.raises(NotFound, match="unknown model"):
        client.create_job(JobSpec(model="absent", task=TASK))
    job = client.create_job(JobSpec(model=model, task=TASK, steps=1))
    with pytest.raises(InvalidInput, match="not in the task's label set"):
        client.submit_feedback(job.id, [Example(text="x", label="perhaps")], "k")
    assert client.get_job(job.id).status != FAILED  # a refused submission changes nothing


def test_mutating_calls_need_the_token(runtime: Runtime, model: str) -> None:
    token = runtime.deployment.settings.model_copy(update={"auth_token": "s3cret"})
    locked = dataclasses.replace(runtime, deployment=Deployment(token))
    server, port = build(locked)
    server.start()
    anonymous = GrpcOptimizerClient(f"127.0.0.1:{port}")
    trusted = GrpcOptimizerClient(f"127.0.0.1:{port}", token="s3cret")
    try:
        with pytest.raises(Unauthenticated):
            anonymous.create_job(JobSpec(model=model, task=TASK))
        job = trusted.create_job(JobSpec(model=model, task=TASK))
        assert anonymous.get_job(job.id).id == job.id  # reads need no token
    finally:
        anonymous.close()
        trusted.close()
        server.stop(0)


def test_jobs_run_against_the_store_service(tmp_path: Path) -> None:
    """Distributed mode: the optimizer reaches the parameter store over gRPC (GrpcStoreClient)."""
    base = Settings(
        home=tmp_path, broker_url="memory://", optimizer_queue=f"optimizer-test-{uuid.uuid4().hex[:8]}"
    )
    store_server, port = build_store(Deployment(base))
    store_server.start()
    rt = wire(Deployment(base.model_copy(update={"store_address": f"127.0.0.1:{port}"})))
    try:
        assert isinstance(rt.store, GrpcStoreClient)
        imported = load_source("synthetic:llama-tiny")
        rt.store.create_model("remote", imported.tensors, imported.config, imported.files)
        spec = JobSpec(
            model="remote", task=TASK, steps=2, batch_size=4, topk=0.05, optimizer=OptimizerSpec(lr=1e-2)
        )
        job = rt.jobs.create_job(spec, validation=examples(4, offset=30))
        rt.jobs.submit_feedback(job.id, examples(8), "k")
        rt.runner.run(job.id)
        job = rt.jobs.get_job(job.id)
        assert job.status == COMPLETED, job.error
        keys = [v.idempotency_key for v in rt.store.log("remote", job.commits[-1].branch)[:-1]]
        assert sorted(k for k in keys if k) == [f"{job.id}:1", f"{job.id}:2"]
    finally:
        rt.close()
        store_server.stop(0)
