"""`llmk serve rec --model NAME[@REF]`: a recommendation worker.

It loads the model from the store (in this process, or the store service at LLMK_STORE_ADDRESS), follows
its branch through version events (hints; the store's head is the authority) and a periodic look at the
head, and answers llmk.v1.Rec over gRPC; with `--worker` (LLMK_REC_WORKER) it also consumes the Celery rec
queue (`llmk.rec.recommend`), answering from the same follower.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from celery import Celery

from llmk.errors import InvalidInput
from llmk.platform.grpc_server import make_server
from llmk.platform.queue_workers import InProcessWorker
from llmk.platform.security import Tls
from llmk.v1 import rec_pb2_grpc
from services.rec.queue import tasks
from services.rec.rpc.servicer import SERVICE, RecServicer
from services.rec.usecases.following import RecWorker

if TYPE_CHECKING:
    from llmk.bootstrap import Deployment

log = logging.getLogger("llmk.rec")


@dataclass
class Running:
    worker: RecWorker
    server: grpc.Server
    port: int
    unsubscribe: Callable[[], None]

    def stop(self) -> None:
        self.server.stop(grace=5).wait()
        self.unsubscribe()
        self.worker.close()
        self.worker.store.close()


def build(deployment: Deployment) -> Running:
    """The worker for LLMK_SERVE_MODEL on the deployment's store and events, and its (unstarted) server."""
    settings = deployment.settings
    if not settings.serve_model:
        raise InvalidInput("name the model to serve: --model NAME[@REF] (or LLMK_SERVE_MODEL)")
    name, _, ref = settings.serve_model.partition("@")
    store = deployment.store()
    try:
        worker = RecWorker(store, name, ref or None, settings.version_poll_seconds)
    except Exception:
        store.close()
        raise
    unsubscribe = deployment.events().subscribe(worker.on_event) if worker.branch else (lambda: None)
    servicer = RecServicer(worker)
    try:
        server, port = make_server(
            [lambda s: rec_pb2_grpc.add_RecServicer_to_server(servicer, s)],
            [SERVICE],
            settings.listen,
            settings.auth_token,
            (),
            settings.max_message_bytes,
            tls=Tls.of(settings),
            auth_reads=settings.auth_reads,
        )
    except Exception:  # a taken port: nothing keeps running behind the error
        unsubscribe()
        worker.close()
        store.close()
        raise
    return Running(worker, server, port, unsubscribe)


@contextmanager
def embedded_worker(deployment: Deployment, app: Celery, model: str, ref: str | None) -> Iterator[RecWorker]:
    """A rec worker following `model` and a Celery worker on `app`'s queue, on threads of this process (the
    embedded mode's rec tier); the producer passes its own app, so the in-process broker is shared."""
    store = deployment.store()
    try:
        worker = RecWorker(store, model, ref, deployment.settings.version_poll_seconds)
    except Exception:
        store.close()
        raise
    unsubscribe = deployment.events().subscribe(worker.on_event) if worker.branch else (lambda: None)
    try:
        tasks.register(app, worker)
        consumer = InProcessWorker(app, deployment.settings.rec_queue, 2, "rec").start()
        try:
            yield worker
        finally:
            consumer.stop()
    finally:
        unsubscribe()
        worker.close()
        store.close()


def consume(deployment: Deployment, worker: RecWorker) -> None:
    """Run a Celery worker on the rec queue in this thread until it is told to stop (SIGTERM)."""
    app = deployment.rec_queue()
    tasks.register(app, worker)
    app.Worker(
        hostname=f"rec-{uuid.uuid4().hex[:8]}@%h",  # unique: several workers may share a host
        queues=[deployment.settings.rec_queue],
        pool="threads",
        concurrency=4,  # answers take about a millisecond; a few threads keep the queue drained
        loglevel="INFO",
    ).start()


def main(deployment: Deployment, worker: bool | None = None) -> None:
    settings = deployment.settings
    running = build(deployment)
    running.server.start()
    follower = running.worker
    log.warning("llmk rec serving %s@%s on port %d", follower.model, follower.version, running.port)
    host = settings.listen.rsplit(":", 1)[0]
    print(f"llmk rec listening on {host}:{running.port}", flush=True)
    try:
        if settings.rec_worker if worker is None else worker:
            consume(deployment, follower)
        else:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            stop.wait()
    finally:
        running.stop()
