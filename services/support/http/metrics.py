"""The gateway's Prometheus figures, in a registry of its own: requests by route and status, time to first
token, and each answer's decode speed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from services.support.interface import Done

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Asgi = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ApiMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmk_api_requests", "HTTP requests by path and status", ["path", "status"], registry=r
        )
        self.first_token = Histogram(
            "llmk_api_time_to_first_token_seconds",
            "Request to first text piece",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "llmk_api_tokens_per_second",
            "Completion tokens per second of decoding, per answer",
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("llmk_api_tokens", "Tokens by kind", ["kind"], registry=r)
        self.streams = Gauge("llmk_api_active_streams", "Answers being streamed now", registry=r)
        self.cancelled = Counter("llmk_api_cancelled", "Answers whose client went away", registry=r)

    def answered(self, done: Done) -> None:
        self.first_token.observe(done.first_token_s)
        decoding = done.seconds - done.first_token_s
        if done.completion_tokens > 1 and decoding > 0:
            self.tokens_per_second.observe((done.completion_tokens - 1) / decoding)
        self.tokens.labels("prompt").inc(done.prompt_tokens)
        self.tokens.labels("completion").inc(done.completion_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Counting:
    """ASGI middleware counting each HTTP request by its route's path and its status."""

    def __init__(self, app: Asgi, metrics: ApiMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(path, str(status[0])).inc()
