"""How Celery declares the task queues, so that its declarations match what a deployment's broker holds.

RabbitMQ refuses to redeclare a queue with other arguments. The deployments (infra/rabbitmq/definitions.json)
declare `inference` and `optimizer` as quorum queues, with a delivery limit and a dead-letter exchange set
by policy; producers and workers must then declare them as quorum queues too (LLMK_QUEUE_TYPE=quorum).
Quorum queues have no per-message delay, so delayed tasks (the optimizer's `countdown`) go through Celery's
native delayed delivery, which needs topic exchanges in front of the queues.
"""

from __future__ import annotations

from typing import Any

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
