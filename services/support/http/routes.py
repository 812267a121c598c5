"""The routes: each decodes its request, calls one use case, encodes the answer."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from sse_starlette import EventSourceResponse

from llmk.errors import TooLarge, Unauthenticated
from services.support.http.encoding import Shape, events
from services.support.http.metrics import ApiMetrics
from services.support.http.schemas import (
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    ModelEntry,
    ModelList,
)
from services.support.interface import Ask, Feedback, Support

STATIC = Path(__file__).with_name("static")


def guard(token: str, max_body_bytes: int) -> Any:
    """The dependency every /v1 route runs first: the bearer token (when one is set), then the body's size."""

    async def check(request: Request, authorization: Annotated[str, Header()] = "") -> None:
        if token and not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            raise Unauthenticated("a valid bearer token is required (Authorization: Bearer ...)")
        declared = request.headers.get("content-length", "")
        too_long = declared.isdigit() and int(declared) > max_body_bytes
        if too_long or len(await request.body()) > max_body_bytes:
            raise TooLarge(f"the request body is over {max_body_bytes} bytes")

    return Depends(check)


def api(support: Support, metrics: ApiMetrics, token: str, max_body_bytes: int) -> APIRouter:
    r = APIRouter(prefix="/v1", dependencies=[guard(token, max_body_bytes)])

    @r.get("/models")
    def models() -> ModelList:
        return ModelList(data=[ModelEntry(id=m.id, created=m.created) for m in support.models()])

    @r.post("/chat/completions")
    def chat(body: ChatRequest) -> Response:
        return _answer(support, metrics, body.ask(), body.stream, body.include_usage())

    @r.post("/completions")
    def completions(body: CompletionRequest) -> Response:
        return _answer(support, metrics, body.ask(), body.stream, body.include_usage())

    @r.post("/feedback")
    def feedback(body: FeedbackRequest) -> dict[str, Any]:
        stored = support.feedback(Feedback(body.id, body.rating, body.correction or ""))
        return {"id": stored.completion_id, "object": "feedback", "rating": stored.rating, "stored": True}

    return r


def _answer(support: Support, metrics: ApiMetrics, ask: Ask, stream: bool, include_usage: bool) -> Response:
    answer = support.answer(ask)
    name = ask.model.partition("@")[0]
    shape = Shape(ask.chat, ask.model, f"{name}@{answer.version}", answer.id)
    if stream:
        headers = {"llmk-version": str(answer.version), "Cache-Control": "no-cache"}
        return EventSourceResponse(events(answer, shape, include_usage, metrics), headers=headers, ping=15)
    text = "".join(answer)
    done = answer.done
    assert done is not None
    metrics.answered(done)
    return JSONResponse(shape.whole(text, done), headers={"llmk-version": str(done.version)})


def pages(app: FastAPI, support: Support, metrics: ApiMetrics) -> None:
    @app.get("/health")
    def health() -> JSONResponse:
        h = support.health()
        body = {"status": "ok" if h.ready else "loading", "model": h.model, "version": h.version}
        return JSONResponse(body | ({"detail": h.detail} if h.detail else {}), 200 if h.ready else 503)

    @app.get("/metrics")
    def exposition() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def chat_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/chat.js", include_in_schema=False)
    def chat_script() -> FileResponse:
        return FileResponse(STATIC / "chat.js", media_type="text/javascript")
