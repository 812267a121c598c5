"""`llmk serve api`: the customer-service gateway (OpenAI-compatible HTTP, the chat page) under uvicorn.

The model named by LLMK_SERVE_MODEL is reached through the inference tier's client: in this process by
default, or the worker at LLMK_INFERENCE_ADDRESS, so gateways and workers scale apart. Completions and
feedback go to the store's database. The server listens at once and answers 503 until the model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI

from llmk.errors import InvalidInput
from services.support.adapters.tables import ConversationsDb
from services.support.http.app import create_app
from services.support.usecases.replies import Limits, SupportService

if TYPE_CHECKING:
    from llmk.bootstrap import Deployment
    from services.inference.interface import InferenceClient

log = logging.getLogger("llmk.support")


def build(
    deployment: Deployment, connect: Callable[[], InferenceClient] | None = None
) -> tuple[SupportService, FastAPI]:
    """The use cases over the deployment's database and its inference client (or the one `connect`
    makes), and their app."""
    settings = deployment.settings
    if not settings.serve_model:
        raise InvalidInput("name the model to serve: --model NAME[@REF] (or LLMK_SERVE_MODEL)")
    name, _, ref = settings.serve_model.partition("@")
    conversations = ConversationsDb(deployment.engine)
    limits = Limits(settings.max_new_tokens, settings.max_context_tokens)

    def shared() -> InferenceClient:  # many callers share it; it follows the branch
        return deployment.inference(name, ref or None, shared=True)

    support = SupportService(settings.serve_model, connect or shared, conversations, limits)
    return support, create_app(support, settings.auth_token, settings.max_message_bytes)


def main(deployment: Deployment) -> None:
    import uvicorn

    settings = deployment.settings
    host, _, port = settings.listen.rpartition(":")
    if not port.isdigit():
        raise InvalidInput(f"listen address must be HOST:PORT, got {settings.listen!r}")
    support, app = build(deployment)
    support.start()
    tls = {"ssl_certfile": settings.tls_cert, "ssl_keyfile": settings.tls_key} if settings.tls_cert else {}
    log.info("support API for %s on %s", settings.serve_model, settings.listen)
    try:
        uvicorn.run(app, host=host or "127.0.0.1", port=int(port), log_level="info", **tls)  # type: ignore[arg-type]
    finally:
        support.close()
