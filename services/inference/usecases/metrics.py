"""Prometheus metrics of one inference worker, in a registry of its own.

A registry per Host (not the global one) lets several hosts live in one process, as tests and the
in-process CLI do, each counting only its own requests.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from llmk.errors import LlmkError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATE_WINDOW_S = 30.0


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmk_inference_requests", "Requests by task and outcome", ["task", "outcome"], registry=r
        )
        self.latency = Histogram(
            "llmk_inference_latency_seconds", "Request latency", ["task"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "llmk_inference_batch_size",
            "Prompts per classify forward pass",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("llmk_inference_tokens", "Tokens processed", ["kind"], registry=r)
        self.tokens_per_second = Gauge(
            "llmk_inference_tokens_per_second",
            f"Completion tokens per second over the last {RATE_WINDOW_S:.0f} s",
            registry=r,
        )
        self.active_sequences = Gauge(
            "llmk_inference_active_sequences", "Generation sequences being decoded", registry=r
        )
        self.served_version = Gauge(
            "llmk_inference_served_version", "Version id answering requests", ["model", "branch"], registry=r
        )
        self.resident_bytes = Gauge(
            "llmk_inference_resident_bytes", "Weight bytes on the compute device", registry=r
        )
        self.total_bytes = Gauge("llmk_inference_weight_bytes", "Weight bytes wherever they live", registry=r)
        self.updates = Counter(
            "llmk_inference_weight_updates",
            "Hot updates by outcome (applied, failed)",
            ["outcome"],
            registry=r,
        )
        self.update_seconds = Histogram(
            "llmk_inference_update_seconds",
            "Event to new version served",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._finished: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self.tokens_per_second.set_function(self._rate)

    @contextmanager
    def track(self, task: str) -> Iterator[None]:
        """Count one request and time it; the outcome is `ok` or the error class that ended it."""
        start = time.perf_counter()
        try:
            yield
        except LlmkError as e:
            self.requests.labels(task, type(e).__name__).inc()
            raise
        except Exception:
            self.requests.labels(task, "internal").inc()
            raise
        self.requests.labels(task, "ok").inc()
        self.latency.labels(task).observe(time.perf_counter() - start)

    def generated(self, prompt_tokens: int, completion_tokens: int, outcome: str, seconds: float) -> None:
        self.requests.labels("generate", outcome).inc()
        self.latency.labels("generate").observe(seconds)
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)
        with self._lock:
            self._finished.append((time.monotonic(), completion_tokens))

    def classified(self, prompt_tokens: int) -> None:
        self.tokens.labels("prompt").inc(prompt_tokens)

    def serving(self, model: str, branch: str, version: int, resident: int, total: int) -> None:
        self.served_version.clear()
        if model:
            self.served_version.labels(model, branch).set(version or -1)
        self.resident_bytes.set(resident)
        self.total_bytes.set(total)

    def count(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent), for tests and the CLI."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def serve(self, port: int) -> int:
        """Expose /metrics on `port` (0 picks a free one); returns the port."""
        server, _thread = start_http_server(port, registry=self.registry)
        return int(server.server_port)

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._finished and self._finished[0][0] < now - RATE_WINDOW_S:
                self._finished.popleft()
            return sum(n for _, n in self._finished) / RATE_WINDOW_S
