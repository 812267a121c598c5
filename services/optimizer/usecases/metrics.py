"""Prometheus metrics of one optimizer process, in a registry of its own (as the inference tier's).

The job runner persists every step in the job row, so the metrics are read off that row around each task
run (steps taken, the gate's decisions and losses of the steps that tried to commit) instead of being
threaded through the training code. Queue lag is the time a job task waited in RabbitMQ past the moment it
was due: the figure to scale optimizer workers on, beside the queue length KEDA watches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from llmk.errors import NotFound
from services.optimizer.interface import Job

LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
SENT_AT = "llmk_sent_at"  # message header: when the producer sent the task (epoch seconds)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.steps = Counter("llmk_optimizer_steps", "Optimizer steps taken", ["model"], registry=r)
        self.gate = Counter(
            "llmk_optimizer_gate_decisions",
            "Committing steps by the validation gate's decision (promoted, held)",
            ["model", "decision"],
            registry=r,
        )
        self.loss = Gauge(
            "llmk_optimizer_loss",
            "Training loss of the last committing step, before and after its update",
            ["model", "when"],
            registry=r,
        )
        self.jobs = Counter(
            "llmk_optimizer_jobs_finished", "Jobs that ended, by status", ["status"], registry=r
        )
        self.queue_lag = Histogram(
            "llmk_optimizer_queue_lag_seconds",
            "Time a job task waited in the queue after it was due",
            buckets=LAG_BUCKETS,
            registry=r,
        )

    def waited(self, request: Any) -> None:
        """Record how long the task now starting (its Celery request) waited: since its ETA, or since sent."""
        sent = getattr(request, SENT_AT, None) or (getattr(request, "headers", None) or {}).get(SENT_AT)
        eta = getattr(request, "eta", None)
        due = datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else sent
        if due is not None:
            self.queue_lag.observe(max(0.0, time.time() - float(due)))

    @contextmanager
    def running(self, get_job: Callable[[str], Job], job_id: str) -> Iterator[None]:
        """Compare the job row before and after one task run and count what the run did."""
        before = _maybe(get_job, job_id)
        yield
        after = _maybe(get_job, job_id)
        if before is None or after is None:
            return
        model = after.spec.model
        self.steps.labels(model).inc(max(0, after.step - before.step))
        for record in after.commits[len(before.commits) :]:
            self.gate.labels(model, "promoted" if record.promoted else "held").inc()
            if record.loss_before is not None:
                self.loss.labels(model, "before").set(record.loss_before)
            if record.loss_after is not None:
                self.loss.labels(model, "after").set(record.loss_after)
        if after.done and not before.done:
            self.jobs.labels(after.status).inc()

    def count(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent), for tests."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def serve(self, port: int) -> int:
        """Expose /metrics on `port` (0 picks a free one); returns the port."""
        server, _thread = start_http_server(port, registry=self.registry)
        return int(server.server_port)


def _maybe(get_job: Callable[[str], Job], job_id: str) -> Job | None:
    try:
        return get_job(job_id)
    except NotFound:
        return None
