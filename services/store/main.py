"""`llmk serve store` / `python -m services.store.main`: the parameter store as a gRPC service."""

from __future__ import annotations

import logging
import signal
import threading

import grpc

from llmk.app.store import Store
from llmk.config import Settings
from llmk.rpc.security import Tls
from llmk.rpc.server import make_server
from llmk.wiring import open_store
from services.store.metrics import Metrics
from services.store.scrubber import Scrubber
from services.store.servicer import MUTATING, SERVICE, StoreServicer, register

log = logging.getLogger("llmk.store")


def build(
    settings: Settings, metrics: Metrics | None = None, store: Store | None = None
) -> tuple[grpc.Server, int]:
    """The store service, over `store` when the caller keeps one (to scrub it, to close it), else its own."""
    servicer = StoreServicer(store or open_store(settings), settings, metrics)
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


def main(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    metrics = Metrics()
    store = open_store(settings)
    server, port = build(settings, metrics, store)
    server.start()
    scrubber = Scrubber(store, settings.scrub_interval_seconds, metrics).start()
    if settings.metrics_port:
        print(f"llmk store metrics on port {metrics.serve(settings.metrics_port)}", flush=True)
    log.warning("llmk store serving on port %d (database %s)", port, settings.sqlalchemy_url.split("@")[-1])
    print(f"llmk store listening on {settings.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    scrubber.stop()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
