"""The one Celery app factory every tier's queue uses, and how it declares the task queues so that its
declarations match what a deployment's broker holds.

RabbitMQ refuses to redeclare a queue with other arguments. The deployments (infra/rabbitmq/definitions.json)
declare `inference` and `optimizer` as quorum queues, with a delivery limit and a dead-letter exchange set
by policy; producers and workers must then declare them as quorum queues too (LLMK_QUEUE_TYPE=quorum).
Quorum queues have no per-message delay, so delayed tasks (the optimizer's `countdown`) go through Celery's
native delayed delivery, which needs topic exchanges in front of the queues.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from llmk.errors import InvalidInput

QUEUE_TYPES = ("classic", "quorum")


def celery_queue_options(queue_type: str) -> dict[str, Any]:
    """Celery settings for task queues of `queue_type` (classic: Celery's defaults)."""
    if queue_type not in QUEUE_TYPES:
        raise InvalidInput(f"LLMK_QUEUE_TYPE must be one of {', '.join(QUEUE_TYPES)}, not {queue_type!r}")
    if queue_type == "classic":
        return {}
    return {
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        "task_default_exchange_type": "topic",
        "broker_transport_options": {"confirm_publish": True},
    }


def make_celery(
    name: str, broker_url: str, queue: str, queue_type: str, backend: str | None, poll_fast: bool = False
) -> Celery:
    """Tasks named `name.*` on `queue`, acknowledged late (a killed worker's message is redelivered), one
    message at a time per worker thread, JSON only. `backend` None: fire-and-forget tasks."""
    app = Celery(name, broker=broker_url, backend=backend, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
        task_routes={f"{name}.*": {"queue": queue}},
        task_ignore_result=backend is None,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        **celery_queue_options(queue_type),
    )
    if poll_fast:  # the in-process broker is polled; its default interval adds a second to every hop
        app.conf.broker_transport_options = {"polling_interval": 0.05}
    return app
