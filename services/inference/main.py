"""`llmk serve inference [--worker]`: an inference worker.

One gRPC server carries llmk.v1.Inference and the Open Inference Protocol service; the worker follows
version events for the branch it serves, exposes Prometheus metrics on LLMK_METRICS_PORT, and with
`--worker` (or LLMK_INFERENCE_WORKER=1) also consumes the Celery `inference` queue, sharing one batcher.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from celery import Celery

from llmk.oip import grpc_service_pb2_grpc
from llmk.platform.grpc_server import make_server
from llmk.platform.queue_workers import InProcessWorker
from llmk.platform.security import Tls
from llmk.v1 import inference_pb2_grpc
from services.inference.queue import tasks
from services.inference.rpc import oip
from services.inference.rpc.servicer import MUTATING, SERVICE, InferenceServicer
from services.inference.usecases.host import Host

if TYPE_CHECKING:
    from llmk.bootstrap import Deployment

log = logging.getLogger("llmk.inference")


@dataclass
class Worker:
    host: Host
    server: grpc.Server
    port: int
    metrics_port: int = 0

    def stop(self) -> None:
        self.server.stop(grace=5).wait()
        self.host.close()
        self.host.store.close()


def build(deployment: Deployment) -> Worker:
    """A Host on the configured store and events, loaded with LLMK_SERVE_MODEL when set, and its server."""
    settings = deployment.settings
    host = Host(settings, deployment.store(), deployment.events())
    if settings.serve_model:
        name, _, ref = settings.serve_model.partition("@")
        host.load(name, ref or None)
    inference, standard = InferenceServicer(host), oip.OipServicer(host)
    server, port = make_server(
        [
            lambda s: inference_pb2_grpc.add_InferenceServicer_to_server(inference, s),
            lambda s: grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(standard, s),
        ],
        [SERVICE, oip.SERVICE],
        settings.listen,
        settings.auth_token,
        MUTATING,
        settings.max_message_bytes,
        workers=2 * (settings.max_sequences + settings.max_batch_size) + 8,  # streams hold a thread each
        tls=Tls.of(settings),
        auth_reads=settings.auth_reads,
    )
    metrics_port = host.metrics.serve(settings.metrics_port) if settings.metrics_port else 0
    return Worker(host, server, port, metrics_port)


def consume(deployment: Deployment, host: Host) -> None:
    """Run a Celery worker on the inference queue in this thread until it is told to stop (SIGTERM)."""
    settings = deployment.settings
    app = deployment.inference_queue()
    tasks.register(app, host)
    app.Worker(
        hostname=f"inference-{uuid.uuid4().hex[:8]}@%h",  # unique: several workers may share a host
        queues=[settings.inference_queue],
        pool="threads",
        concurrency=settings.max_batch_size,  # enough tasks in flight to fill a batch
        loglevel="INFO",
    ).start()


@contextmanager
def embedded_worker(deployment: Deployment, app: Celery, name: str, ref: str | None) -> Iterator[Host]:
    """A Host serving `name` and a Celery worker on its queue, on threads of this process (the embedded
    mode's inference tier); the producer passes its own app, so the in-process broker is shared."""
    settings = deployment.settings
    store = deployment.store()
    host = Host(settings, store, deployment.events())
    try:
        host.load(name, ref)
        tasks.register(app, host)
        worker = InProcessWorker(app, settings.inference_queue, settings.max_batch_size, "inference")
        worker.start()
        try:
            yield host
        finally:
            worker.stop()
    finally:
        host.close()
        store.close()


def main(deployment: Deployment, worker: bool | None = None) -> None:
    settings = deployment.settings
    running = build(deployment)
    running.server.start()
    info = running.host.info()
    log.warning(
        "llmk inference serving %s@%s on port %d", info.model or "-", info.version or "-", running.port
    )
    print(f"llmk inference listening on {settings.listen.rsplit(':', 1)[0]}:{running.port}", flush=True)
    if running.metrics_port:
        print(f"llmk inference metrics on port {running.metrics_port}", flush=True)
    try:
        if settings.inference_worker if worker is None else worker:
            consume(deployment, running.host)
        else:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            stop.wait()
    finally:
        running.stop()
