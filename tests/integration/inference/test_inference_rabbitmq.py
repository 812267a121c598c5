"""Inference over the real RabbitMQ: Celery tasks shared by several worker processes, answers returned over
rpc://, and version events reaching a worker process through the fanout exchange."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from celery.contrib.testing.worker import start_worker
from kombu import Connection

from llmk.bootstrap import Deployment
from llmk.v1 import inference_pb2, inference_pb2_grpc
from services.inference.queue import tasks
from services.inference.usecases.host import Host
from tests.integration.inference.inference_processes import ServiceProcess, free_port
from tests.unit.inference.hosting import LABELS, TEXTS, perturbed, settings_for

pytestmark = pytest.mark.rabbitmq


def scrape(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    return 0.0


def test_tasks_are_shared_by_every_worker_process_and_answered_over_rpc(
    rabbitmq_url: str, tiny_home: tuple[Path, str], service: Callable[..., ServiceProcess]
) -> None:
    home, name = tiny_home
    queue = f"llmk-test-inference-{uuid.uuid4().hex[:8]}"
    settings = settings_for(home, broker_url=rabbitmq_url, inference_queue=queue, max_wait_ms=20.0)
    other = service(
        home, name, "--worker", broker_url=rabbitmq_url, inference_queue=queue, metrics_port=free_port()
    )
    other.wait_for(r"\S+@\S+ ready")  # consuming: tasks sent now reach both workers
    host = Host(settings, Deployment(settings).local_store())
    host.load(name)
    app = Deployment(settings).inference_queue()
    tasks.register(app, host)
    try:
        with start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, queues=[queue], shutdown_timeout=30
        ):
            sent = [app.send_task(tasks.CLASSIFY, kwargs={"texts": [t], "labels": LABELS}) for t in TEXTS * 4]
            answers = [s.get(timeout=60) for s in sent]
            generated = app.send_task(tasks.GENERATE, kwargs={"request": {"prompt": "Hi", "max_tokens": 5}})
            assert generated.get(timeout=60)["completion_tokens"] == 5
        here = host.metrics.count("llmk_inference_requests_total", task="classify", outcome="ok")
        there = scrape(other.metrics_port, 'llmk_inference_requests_total{outcome="ok",task="classify"}')
        expected = dict(zip(TEXTS, [s.label for s in host.classify(TEXTS, LABELS).results], strict=True))
    finally:
        host.close()
        other.stop()
        with Connection(rabbitmq_url) as connection:  # the broker is shared: leave no queue behind
            connection.default_channel.queue_delete(queue)
    for text, answer in zip(TEXTS * 4, answers, strict=True):
        assert answer["version"] == 1
        assert answer["results"][0]["label"] == expected[text]
    assert here > 0
    assert there > 0
    assert here + there == len(sent)  # both workers took tasks, none twice


def test_a_commit_reaches_a_worker_process_through_the_fanout(
    rabbitmq_url: str, tiny_home: tuple[Path, str], service: Callable[..., ServiceProcess]
) -> None:
    home, name = tiny_home
    worker = service(home, name, broker_url=rabbitmq_url, version_poll_seconds=0)  # events only, no polling
    publishing = settings_for(home, broker_url=rabbitmq_url)  # the store announces commits on the fanout
    store = Deployment(publishing).local_store()
    with grpc.insecure_channel(worker.address) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        assert stub.Info(inference_pb2.InfoRequest()).version == 1
        v = store.commit_full(name, perturbed(store, name, ["model.layers.0.mlp.up_proj.weight"], 1))
        deadline = time.monotonic() + 30
        while (info := stub.Info(inference_pb2.InfoRequest())).version != v.id:
            assert time.monotonic() < deadline, "the event never reached the worker"
            time.sleep(0.05)
        assert info.update_error == ""
        reply = stub.Classify(inference_pb2.ClassifyRequest(texts=["x"], labels=LABELS, version=str(v.id)))
        assert reply.version == v.id
