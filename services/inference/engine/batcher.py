"""Dynamic batching for classification: many caller threads, one forward pass per batch.

Requests wait at most `max_wait_ms` for company, and a batch holds at most `max_batch_size` prompts;
requests that share labels and template run as one forward pass. The queue is bounded so an overload is
refused at once (ResourceExhausted) instead of growing latency without limit.

Each answer names the weight version it was computed with: `version` is read under `lock`, the same lock a
hot update holds while it changes the weights and the version together.

The keys and values of each template's fixed start are computed once and reused by every batch; they are
dropped when the version changes or any weight is written through `weights.set_weight`, and recomputed by
the next batch that uses the template.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from llmk.errors import ResourceExhausted, Unavailable
from services.inference.engine import compute
from services.inference.engine.attention import Prefix
from services.inference.engine.classifier import classify, template_prefix, token_logprobs, validate
from services.inference.engine.model import Model
from services.inference.engine.weights import writes

MAX_TEMPLATES = 16  # templates whose prefix is kept; the least recently built one goes first


class Probabilities(list[dict[str, float]]):
    """One {label: probability} dict per prompt, and the weight version that computed them all."""

    def __init__(self, rows: list[dict[str, float]], version: int = 0):
        super().__init__(rows)
        self.version = version


@dataclass
class _Job:
    prompts: list[str]
    labels: tuple[str, ...]
    template: str
    future: Future[Probabilities] = field(default_factory=Future)


class ClassifyBatcher:
    """Collects classify requests from any thread; `lock` is held while a batch runs, so a caller that
    holds it can change the weights between batches."""

    def __init__(
        self,
        model: Model,
        tokenizer: Any,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        separator: str = " ",
        version: int = 0,
        on_batch: Callable[[int], None] | None = None,
    ):
        self.model, self.tokenizer, self.separator = model, tokenizer, separator
        self.version, self.on_batch = version, on_batch  # on_batch(prompts in the forward pass)
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000
        self.lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._carry: list[_Job | None] = []  # at most one item that opens the next batch
        self._prefixes: dict[str, Prefix | None] = {}  # template -> its prefix for the weights of `_served`
        self._served: tuple[int, int] = (version, writes(model))
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llmk-classify-batcher", daemon=True)
        self._thread.start()

    def submit(
        self, prompts: Sequence[str], labels: Sequence[str], template: str = "{prompt}"
    ) -> Future[Probabilities]:
        validate(prompts, labels, template)
        if self._closed:
            raise Unavailable("the batcher is closed")
        job = _Job(list(prompts), tuple(labels), template)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise ResourceExhausted(
                f"{self._queue.maxsize} classify requests already queued; retry later"
            ) from None
        return job.future

    def classify(
        self, prompts: Sequence[str], labels: Sequence[str], template: str = "{prompt}"
    ) -> Probabilities:
        return self.submit(prompts, labels, template).result()

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while (jobs := self._collect()) is not None:
            self._run(jobs)
        self._drain()

    def _collect(self) -> list[_Job] | None:
        """Block for a first job, then gather more until the batch is full or the wait is over."""
        first = self._carry.pop() if self._carry else self._queue.get()
        if first is None:
            return None
        jobs, size, deadline = [first], len(first.prompts), time.monotonic() + self.max_wait_s
        while size < self.max_batch_size and (left := deadline - time.monotonic()) > 0:
            try:
                job = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if job is None or size + len(job.prompts) > self.max_batch_size:
                self._carry.append(job)  # the sentinel or a job that does not fit opens the next round
                break
            jobs.append(job)
            size += len(job.prompts)
        return jobs

    def _run(self, jobs: list[_Job]) -> None:
        groups: dict[tuple[tuple[str, ...], str], list[_Job]] = {}
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                groups.setdefault((job.labels, job.template), []).append(job)
        for (labels, template), group in groups.items():
            prompts = [p for job in group for p in job.prompts]
            try:
                with self.lock:
                    version = self.version
                    prefix = compute.run(self._prefix, template)
                    results = compute.run(
                        classify,
                        self.model,
                        self.tokenizer,
                        prompts,
                        labels,
                        template,
                        self.separator,
                        prefix,
                    )
            except Exception as error:  # one bad group fails its own callers only
                for job in group:
                    job.future.set_exception(error)
                continue
            if self.on_batch is not None:
                self.on_batch(len(prompts))
            start = 0
            for job in group:
                job.future.set_result(Probabilities(results[start : start + len(job.prompts)], version))
                start += len(job.prompts)

    def score(self, ids: list[int]) -> tuple[list[float], int]:
        """Each token's log-probability after the ones before it, and the version that computed them (the
        lock keeps a hot update out of the pass)."""
        with self.lock:
            return compute.run(token_logprobs, self.model, ids), self.version

    def _prefix(self, template: str) -> Prefix | None:
        """The template's keys and values for the weights served now (under `lock`)."""
        served = (self.version, writes(self.model))
        if served != self._served:
            self._prefixes.clear()
            self._served = served
        if template not in self._prefixes:
            if len(self._prefixes) >= MAX_TEMPLATES:
                del self._prefixes[next(iter(self._prefixes))]
            self._prefixes[template] = template_prefix(self.model, self.tokenizer, template)
        return self._prefixes[template]

    def _drain(self) -> None:
        """Refuse whatever arrived after close()."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(Unavailable("the batcher was closed"))
