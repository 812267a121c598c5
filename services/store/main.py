"""`llmk serve store`: the parameter store as a gRPC service."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

import grpc

from llmk.platform.grpc_server import make_server
from llmk.platform.security import Tls
from services.store.metrics import Metrics
from services.store.rpc.servicer import MUTATING, SERVICE, StoreServicer, register
from services.store.scrubber import Scrubber
from services.store.usecases.store import Store

if TYPE_CHECKING:
    from llmk.bootstrap import Deployment

log = logging.getLogger("llmk.store")


def build(
    deployment: Deployment, metrics: Metrics | None = None, store: Store | None = None
) -> tuple[grpc.Server, int]:
    """The store service, over `store` when the caller keeps one (to scrub it, to close it), else its own."""
    settings = deployment.settings
    servicer = StoreServicer(store or deployment.local_store(), settings, metrics)
    return make_server(
        [lambda s: register(servicer, s)],
        [SERVICE],
        settings.listen,
        settings.auth_token,
        MUTATING,
        settings.max_message_bytes,
        tls=Tls.of(settings),
        auth_reads=settings.auth_reads,
    )


def main(deployment: Deployment) -> None:
    settings = deployment.settings
    metrics = Metrics()
    store = deployment.local_store()
    server, port = build(deployment, metrics, store)
    server.start()
    scrubber = Scrubber(store, settings.scrub_interval_seconds, metrics).start()
    if settings.metrics_port:
        print(f"llmk store metrics on port {metrics.serve(settings.metrics_port)}", flush=True)
    log.info("llmk store serving on port %d (database %s)", port, settings.sqlalchemy_url.split("@")[-1])
    print(f"llmk store listening on {settings.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    scrubber.stop()
    server.stop(grace=5).wait()
