"""`llmk serve rec --model NAME[@REF]`: a recommendation worker.

It loads the model from the store (in this process, or the store service at LLMK_STORE_ADDRESS), follows
its branch through version events (hints; the store's head is the authority) and a periodic look at the
head, and answers llmk.v1.Rec over gRPC.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from llmk.errors import InvalidInput
from llmk.platform.grpc_server import make_server
from llmk.platform.security import Tls
from llmk.v1 import rec_pb2_grpc
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


def main(deployment: Deployment) -> None:
    running = build(deployment)
    running.server.start()
    worker = running.worker
    log.warning("llmk rec serving %s@%s on port %d", worker.model, worker.version, running.port)
    host = deployment.settings.listen.rsplit(":", 1)[0]
    print(f"llmk rec listening on {host}:{running.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        running.stop()
