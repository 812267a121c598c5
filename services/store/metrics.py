"""Prometheus metrics of one store service, in a registry of its own (as the inference tier's).

What an operator watches on the store: how many versions are committed and how large they are, how often
writers collide on a branch head (conflicts: raise the optimizer's retry budget or split branches), how
fast weights stream out to workers, and whether any stored object failed its checksum (never served), on a
read or in the background scrub.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from llmk.domain.versions import Version
from llmk.errors import Conflict, Corrupt, LlmkError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmk_store_requests", "Requests by method and outcome", ["method", "outcome"], registry=r
        )
        self.latency = Histogram(
            "llmk_store_latency_seconds", "Request latency", ["method"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.commits = Counter(
            "llmk_store_commits", "Versions committed, by kind (create, delta, full, rollback, squash)",
            ["kind"], registry=r,
        )  # fmt: skip
        self.conflicts = Counter(
            "llmk_store_conflicts", "Commits refused because the branch head moved", registry=r
        )
        self.bytes_written = Counter(
            "llmk_store_written_bytes",
            "Bytes of the committed entries' parts, as sent (object files code sparse indices smaller)",
            registry=r,
        )
        self.fetched_bytes = Counter(
            "llmk_store_fetched_bytes",
            "Bytes of tensor chunks streamed to readers (FetchTensors)",
            registry=r,
        )
        self.fetch_seconds = Counter(
            "llmk_store_fetch_seconds", "Time spent streaming tensors; fetched_bytes / this = throughput",
            registry=r,
        )  # fmt: skip
        self.verification_failures = Counter(
            "llmk_store_verification_failures",
            "Reads refused because a stored object was missing or failed its checksum",
            registry=r,
        )
        self.scrubs = Counter("llmk_store_scrubs", "Background scrub passes completed", registry=r)
        self.scrub_damaged = Counter(
            "llmk_store_scrub_damaged_objects",
            "Damaged object files the background scrub found and quarantined (restore them from a backup)",
            registry=r,
        )

    @contextmanager
    def track(self, method: str) -> Iterator[None]:
        """Count one call and time it; the outcome is `ok` or the error class that ended it."""
        start = time.perf_counter()
        try:
            yield
        except LlmkError as e:
            self._failed(method, e)
            raise
        except Exception:
            self.requests.labels(method, "internal").inc()
            raise
        self.requests.labels(method, "ok").inc()
        self.latency.labels(method).observe(time.perf_counter() - start)

    def committed(self, kind: str, version: Version) -> None:
        self.commits.labels(kind).inc()
        self.bytes_written.inc(sum(e.nbytes for e in version.entries))

    def scrubbed(self, damaged: list[str]) -> None:
        self.scrubs.inc()
        self.scrub_damaged.inc(len(damaged))

    def streamed(self, method: str, messages: Iterator[bytes]) -> Iterator[bytes]:
        """Pass a stream of serialized tensor chunks through, counting its bytes and the time spent
        producing it."""
        with self.track(method):
            last = time.perf_counter()
            for message in messages:  # reading, checking and sending each chunk counts
                self.fetched_bytes.inc(len(message))
                yield message
                now = time.perf_counter()
                self.fetch_seconds.inc(now - last)
                last = now

    def count(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent), for tests."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def serve(self, port: int) -> int:
        """Expose /metrics on `port` (0 picks a free one); returns the port."""
        server, _thread = start_http_server(port, registry=self.registry)
        return int(server.server_port)

    def _failed(self, method: str, error: LlmkError) -> None:
        self.requests.labels(method, type(error).__name__).inc()
        if isinstance(error, Conflict):
            self.conflicts.inc()
        if isinstance(error, Corrupt):
            self.verification_failures.inc()
