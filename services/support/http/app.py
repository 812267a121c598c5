"""The OpenAI-compatible gateway as one FastAPI application over the Support use cases."""

from __future__ import annotations

from fastapi import FastAPI

from services.support.http import errors, routes
from services.support.http.metrics import ApiMetrics, Counting
from services.support.interface import Support


def create_app(support: Support, token: str = "", max_body_bytes: int = 8 << 20) -> FastAPI:
    """`token`: the bearer token every /v1 call must carry (none when empty)."""
    app = FastAPI(title="llmk support", docs_url=None, redoc_url=None)
    metrics = ApiMetrics()
    errors.install(app)
    app.include_router(routes.api(support, metrics, token, max_body_bytes))
    routes.pages(app, support, metrics)
    app.add_middleware(Counting, metrics=metrics)
    return app
