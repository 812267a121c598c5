"""`llmk serve optimizer [--queue-only]`: the optimizer tier.

The service runs the gRPC API and, unless LLMK_OPTIMIZER_WORKER=false, a job worker on a thread of the same
process; `--queue-only` runs only a Celery worker on the optimizer queue (scale these out with RabbitMQ).
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
from celery.signals import worker_shutting_down

from llmk.platform.grpc_server import make_server
from llmk.platform.queue_workers import InProcessWorker
from llmk.platform.security import Tls
from llmk.v1 import optimizer_pb2_grpc
from services.optimizer.adapters.job_table import JobsDb
from services.optimizer.queue.tasks import register_tasks, scheduler
from services.optimizer.rpc.servicer import MUTATING, SERVICE, OptimizerServicer
from services.optimizer.usecases.jobs import JobService
from services.optimizer.usecases.metrics import Metrics
from services.optimizer.usecases.training import JobRunner
from services.store.interface import StoreClient

if TYPE_CHECKING:
    from llmk.bootstrap import Deployment

log = logging.getLogger("llmk.optimizer")
MAX_GRADIENT_BYTES = 1 << 30


@dataclass
class Runtime:
    """Everything one optimizer process uses, wired once from the settings."""

    deployment: Deployment
    app: Celery
    jobs: JobService
    runner: JobRunner
    store: StoreClient
    metrics: Metrics

    def close(self) -> None:
        self.store.close()


def wire(deployment: Deployment) -> Runtime:
    """One optimizer process's pieces, on the deployment's database engine and store."""
    settings = deployment.settings
    store = deployment.store()
    repo = JobsDb(deployment.engine)
    blobs = deployment.optimizer_state()
    app = deployment.celery("llmk.optimizer", settings.optimizer_queue)
    jobs = JobService(
        repo, store, blobs, scheduler(app, settings.optimizer_queue), settings.optimizer_max_examples
    )
    runner = JobRunner(
        repo,
        store,
        blobs,
        settings.optimizer_lease_seconds,
        settings.optimizer_task_seconds,
        threads=settings.optimizer_threads,
    )
    metrics = Metrics()
    register_tasks(app, runner, jobs.fail, metrics)
    return Runtime(deployment, app, jobs, runner, store, metrics)


def build(runtime: Runtime) -> tuple[grpc.Server, int]:
    servicer = OptimizerServicer(runtime.jobs, MAX_GRADIENT_BYTES)
    s = runtime.deployment.settings
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
    if runtime.deployment.broker_in_process:
        for job in runtime.jobs.list_jobs(limit=10_000):
            if not job.done:
                runtime.jobs.schedule(job.id)


@contextmanager
def embedded(deployment: Deployment, worker: bool = True) -> Iterator[JobService]:
    """The optimizer inside the calling process (the CLI's embedded mode): its use cases and a worker."""
    runtime = wire(deployment)
    queue = deployment.settings.optimizer_queue
    background = InProcessWorker(runtime.app, queue).start() if worker else None
    try:
        if background:
            resume_unfinished(runtime)
        yield runtime.jobs
    finally:
        if background:
            background.stop()
        runtime.close()


def main(deployment: Deployment) -> None:
    settings = deployment.settings
    runtime = wire(deployment)
    server, port = build(runtime)
    server.start()
    worker = (
        InProcessWorker(runtime.app, settings.optimizer_queue).start() if settings.optimizer_worker else None
    )
    if worker:
        resume_unfinished(runtime)
    log.info("llmk optimizer serving on port %d (queue %s)", port, settings.optimizer_queue)
    print(f"llmk optimizer listening on {settings.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    if settings.metrics_port:
        print(f"llmk optimizer metrics on port {runtime.metrics.serve(settings.metrics_port)}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    shut_down(runtime, worker, server)


def shut_down(runtime: Runtime, worker: InProcessWorker | None, server: grpc.Server | None = None) -> None:
    """Stop within seconds (Kubernetes gives 30): the running job ends its current step, which is already
    persisted, and its task returns with the job queued again, so its message is acknowledged while the
    broker connection is still up and another worker (or this one, restarted) continues the job."""
    runtime.runner.stopping.set()
    if server is not None:
        server.stop(grace=5).wait()
    if worker is not None:
        worker.stop()
    runtime.close()


def run_worker(deployment: Deployment) -> None:
    """A standalone Celery worker on the optimizer queue (blocks; Celery handles the signals)."""
    settings = deployment.settings
    runtime = wire(deployment)
    # Celery's warm shutdown waits for the running task: let it end after its current step
    worker_shutting_down.connect(lambda **_: runtime.runner.stopping.set(), weak=False)
    try:
        runtime.app.worker_main(
            ["worker", "--queues", settings.optimizer_queue, "--pool", "threads", "--concurrency", "1",
             "--hostname", f"optimizer-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle",
             "--loglevel", "INFO"]
        )  # fmt: skip
    finally:
        runtime.close()
