"""`llmk serve optimizer` / `python -m services.optimizer.main [worker]`: the optimizer tier.

`serve` runs the gRPC service and, unless LLMK_OPTIMIZER_WORKER=false, a job worker on a thread of the same
process; `worker` runs only a Celery worker on the optimizer queue (scale these out with RabbitMQ).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
from celery import Celery

from llmk.adapters.jobs_db import JobsDb
from llmk.adapters.migrate import upgrade
from llmk.adapters.objects import ObjectStore
from llmk.adapters.schema import make_engine
from llmk.app.clients import StoreClient
from llmk.app.jobs import JobService
from llmk.app.training import JobRunner
from llmk.bus.workers import InProcessWorker
from llmk.client import connect
from llmk.config import Settings
from llmk.rpc.security import Tls
from llmk.rpc.server import make_server
from llmk.v1 import optimizer_pb2_grpc
from services.optimizer.metrics import Metrics
from services.optimizer.servicer import MUTATING, SERVICE, OptimizerServicer
from services.optimizer.tasks import make_app, register_tasks, scheduler

log = logging.getLogger("llmk.optimizer")
MAX_GRADIENT_BYTES = 1 << 30


@dataclass
class Runtime:
    """Everything one optimizer process uses, wired once from the settings."""

    settings: Settings
    app: Celery
    jobs: JobService
    runner: JobRunner
    store: StoreClient
    metrics: Metrics

    def close(self) -> None:
        self.store.close()


def wire(settings: Settings) -> Runtime:
    store = connect(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    if settings.auto_migrate:
        upgrade(engine)
    repo = JobsDb(engine)
    blobs = ObjectStore(settings.optimizer_state_path, settings.max_header_bytes)
    app = make_app(settings)
    jobs = JobService(
        repo, store, blobs, scheduler(app, settings.optimizer_queue), settings.optimizer_max_examples
    )
    runner = JobRunner(repo, store, blobs, settings.optimizer_lease_seconds, settings.optimizer_task_seconds)
    metrics = Metrics()
    register_tasks(app, runner, jobs.fail, metrics)
    return Runtime(settings, app, jobs, runner, store, metrics)


def build(runtime: Runtime) -> tuple[grpc.Server, int]:
    servicer = OptimizerServicer(runtime.jobs, MAX_GRADIENT_BYTES)
    s = runtime.settings
    return make_server(
        [lambda server: optimizer_pb2_grpc.add_OptimizerServicer_to_server(servicer, server)],
        [SERVICE],
        s.listen,
        s.auth_token,
        MUTATING,
        s.max_message_bytes,
        tls=Tls.of(s),
        auth_reads=s.auth_reads,
    )


def resume_unfinished(runtime: Runtime) -> None:
    """An in-process broker forgets its messages when the process ends: wake every unfinished job."""
    if runtime.settings.broker_url.startswith("memory"):
        for job in runtime.jobs.list_jobs(limit=10_000):
            if not job.done:
                runtime.jobs.schedule(job.id)


@contextmanager
def embedded(settings: Settings, worker: bool = True) -> Iterator[JobService]:
    """The optimizer inside the calling process (the CLI's embedded mode): its use cases and a worker."""
    runtime = wire(settings)
    background = InProcessWorker(runtime.app, settings.optimizer_queue).start() if worker else None
    try:
        if background:
            resume_unfinished(runtime)
        yield runtime.jobs
    finally:
        if background:
            background.stop()
        runtime.close()


def main(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    runtime = wire(settings)
    server, port = build(runtime)
    server.start()
    worker = (
        InProcessWorker(runtime.app, settings.optimizer_queue).start() if settings.optimizer_worker else None
    )
    if worker:
        resume_unfinished(runtime)
    log.warning("llmk optimizer serving on port %d (queue %s)", port, settings.optimizer_queue)
    print(f"llmk optimizer listening on {settings.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    if settings.metrics_port:
        print(f"llmk optimizer metrics on port {runtime.metrics.serve(settings.metrics_port)}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()
    if worker:
        worker.stop()
    runtime.close()


def run_worker(settings: Settings | None = None) -> None:
    """A standalone Celery worker on the optimizer queue (blocks; Celery handles the signals)."""
    settings = settings or Settings()
    runtime = wire(settings)
    try:
        runtime.app.worker_main(
            ["worker", "--queues", settings.optimizer_queue, "--pool", "threads", "--concurrency", "1",
             "--hostname", f"optimizer-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle",
             "--loglevel", "INFO"]
        )  # fmt: skip
    finally:
        runtime.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_worker() if sys.argv[1:] == ["worker"] else main()
