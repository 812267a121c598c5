"""The served model: one version of one stored model, built from the store alone and kept current.

A Host answers classify and generate requests from any number of threads (gRPC handlers, queue tasks, the
CLI) with one model, whose weights the continuous-batching generator and the classify batcher share. It
checks every request against the worker's limits before it joins a batch, refuses a pinned version it
does not serve, and, when it serves a branch, follows it (see updates.py): every answer names the one
version that computed it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmk.config import Settings
from llmk.domain.task_spec import TaskSpec, task_of
from llmk.errors import FailedPrecondition, InvalidInput, LlmkError, Unavailable
from services.inference.engine.generator import Generator, Request, Result, Stream
from services.inference.interface import PromptScores
from services.inference.usecases.follower import Follower
from services.inference.usecases.loading import Served, build_served, weight_bytes
from services.inference.usecases.metrics import Metrics
from services.store.interface import StoreClient

log = logging.getLogger("llmk.inference")


@dataclass(frozen=True)
class Info:
    model: str = ""
    version: int = 0  # 0 when nothing is served
    branch: str = ""  # the branch followed for hot updates; empty when pinned to a tag or a version id
    device: str = ""
    dtype: str = ""
    resident_bytes: int = 0
    total_bytes: int = 0
    options: tuple[str, ...] = ()
    update_error: str = ""  # why the last hot update failed; empty after a successful one


@dataclass(frozen=True)
class Scores:
    probabilities: dict[str, float]
    label: str
    prompt_tokens: int


@dataclass(frozen=True)
class Classification:
    results: list[Scores]
    version: int


@dataclass
class Generation:
    """A running generate request: iterate for text pieces, then the Result; cancel() frees its sequence."""

    stream: Stream
    generator: Generator
    pin: int  # 0: not pinned
    metrics: Metrics
    started: float = field(default_factory=time.perf_counter)
    finished: bool = False

    def __iter__(self) -> Iterator[str | Result]:
        try:
            for item in self.stream:
                if isinstance(item, Result):
                    self._finish(item)
                yield item
        except LlmkError as e:
            self._count(type(e).__name__)
            raise

    def result(self) -> Result:
        for item in self:
            if isinstance(item, Result):
                return item
        raise Unavailable("the generation ended without a result")

    def cancel(self) -> None:
        self.generator.cancel(self.stream)
        self._count("cancelled")

    def _finish(self, result: Result) -> None:
        if self.pin and result.version != self.pin:
            raise FailedPrecondition(f"version {self.pin} was replaced by {result.version} before the answer")
        outcome = "cancelled" if result.finish_reason == "cancelled" else "ok"
        if not self.finished:
            self.finished = True
            elapsed = time.perf_counter() - self.started
            self.metrics.generated(result.prompt_tokens, result.completion_tokens, outcome, elapsed)

    def _count(self, outcome: str) -> None:
        if not self.finished:
            self.finished = True
            self.metrics.requests.labels("generate", outcome).inc()


class Host:
    """Serves one model version at a time to any number of threads, and follows its branch."""

    def __init__(
        self, settings: Settings, store: StoreClient, events: Any = None, metrics: Metrics | None = None
    ):
        self.settings, self.store = settings, store
        self.metrics = metrics or Metrics()
        self.metrics.active_sequences.set_function(self._active_count)
        self._served: Served | None = None
        self._tasks: dict[tuple[str, int], TaskSpec | None] = {}  # (model, version) -> its task
        self._lock = threading.RLock()  # one load, unload or update at a time
        self.follower = Follower(
            store, settings, self.metrics, lambda: self._served, self._lock, self._publish
        )
        # events: llmk.bootstrap.open_events(settings), or None to follow by polling the branch head alone
        self._unsubscribe: Callable[[], None] | None = (
            events.subscribe(self.follower.on_event) if events else None
        )

    # ---- lifecycle

    def load(self, name: str, ref: str | None = None, options: Sequence[str] | None = None) -> Info:
        """Serve `name` at `ref` (default: the main branch); a branch is followed, a tag or id is not.

        `options` default to LLMK_LOAD_OPTIONS; ["none"] loads the plain weights."""
        chosen = tuple(o for o in (options or _split(self.settings.load_options)) if o != "none")
        served = build_served(
            self.store, self.settings, name, ref or None, chosen, self.metrics.batch_size.observe
        )
        with self._lock:
            old, self._served, self.follower.error = self._served, served, ""
        if old is not None:
            old.close()
        self._publish()
        self.follower.check()  # a commit that landed while building is caught up at once
        log.info(
            "serving %s version %s (branch %r) on %s", name, served.version, served.branch, served.device
        )
        return self.info()

    def unload(self) -> Info:
        with self._lock:
            old, self._served = self._served, None
        if old is not None:
            old.close()
        self._publish()
        return self.info()

    def info(self) -> Info:
        served = self._served
        if served is None:
            return Info(update_error=self.follower.error)
        resident, total = weight_bytes(served.model)
        dtype = str(served.model.lm_head.weight.dtype).removeprefix("torch.")
        return Info(
            served.name,
            served.version,
            served.branch,
            str(served.device),
            dtype,
            resident,
            total,
            served.options,
            served.broken or self.follower.error,
        )

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.follower.close()
        self.unload()

    # ---- requests

    def classify(
        self,
        texts: Sequence[str],
        labels: Sequence[str] = (),
        template: str = "",
        model: str = "",
        version: str = "",
    ) -> Classification:
        with self.metrics.track("classify"):
            served, pin = self._serving(model, version)
            task = self._task(served)
            if task is not None:  # what the optimizer trains: the model's labels, template and text length
                texts = [_cut(served.tokenizer, t, task.max_tokens) for t in texts]
            labels = list(labels) or (list(task.labels) if task else _split(self.settings.default_labels))
            default_template = task.template if task else self.settings.classify_template
            prompt = self._classify_template(template or default_template)
            counts = self._check_classify(served, texts, labels, prompt)
            probabilities = served.batcher.submit(list(texts), labels, prompt).result()
            if pin and probabilities.version != pin:
                raise FailedPrecondition(f"version {pin} was replaced by {probabilities.version}")
            self.metrics.classified(sum(counts))
            results = [
                Scores(p, max(p, key=p.__getitem__), n) for p, n in zip(probabilities, counts, strict=True)
            ]
            return Classification(results, probabilities.version)

    def generate(self, request: Request, model: str = "", version: str = "") -> Generation:
        """Start a generation; RESOURCE_EXHAUSTED when the queue is full, never an unbounded backlog."""
        try:
            served, pin = self._serving(model, version)
            self._check_generate(served, request)
            stream = served.generator.submit(request)
        except LlmkError as e:
            self.metrics.requests.labels("generate", type(e).__name__).inc()
            raise
        return Generation(stream, served.generator, pin, self.metrics)

    def score(self, text: str, model: str = "", version: str = "") -> PromptScores:
        """The raw text's tokens (as a raw prompt is encoded) and each one's log-probability after those
        before it, under one version (`version`: that one, or FailedPrecondition)."""
        with self.metrics.track("score"):
            served, pin = self._serving(model, version)
            ids = list(served.tokenizer.encode(text))
            if not text.strip() or not ids:
                raise InvalidInput("the prompt is empty")
            if len(ids) > self.settings.max_prompt_tokens:
                raise InvalidInput(
                    f"the prompt has {len(ids)} tokens; the limit is {self.settings.max_prompt_tokens}"
                )
            logprobs, scored = served.batcher.score(ids)
            if pin and scored != pin:
                raise FailedPrecondition(f"version {pin} was replaced by {scored}")
            tokens = [served.tokenizer.decode([i]) for i in ids]
            offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
            return PromptScores(scored, tokens, [None, *logprobs], offsets)

    def _serving(self, model: str, version: str) -> tuple[Served, int]:
        """The loaded model if it is the one asked, and the pinned version's id (0 when none is pinned).

        NOT_FOUND for names the store does not know, FAILED_PRECONDITION for what is not loaded here.
        A pin may be a version id, a tag or a branch: it must resolve to the version being served."""
        served = self._served
        if served is None or (model and model != served.name):
            if model:
                self.store.model(model)  # raises NotFound for a model the store does not know
            loaded = f"it serves {served.name}" if served else "no model is loaded"
            raise FailedPrecondition(f"model {model or '(any)'} is not loaded by this worker: {loaded}")
        if served.broken:
            raise Unavailable(served.broken)
        pin = 0
        if version == str(served.version):
            pin = served.version
        elif version:  # any other ref (an id, a tag, a branch) is resolved by the store, once
            pin = self.store.version(served.name, version).id  # raises NotFound for an unknown version
            if pin != served.version:
                raise FailedPrecondition(
                    f"{served.name} version {version} is not loaded (serving {served.version})"
                )
        return served, pin

    def task(self) -> TaskSpec | None:
        """The task of the served version (None when its model has none, or nothing is served)."""
        served = self._served
        return self._task(served) if served else None

    def _task(self, served: Served) -> TaskSpec | None:
        key = (served.name, served.version)
        if key not in self._tasks:
            self._tasks[key] = task_of(self.store, served.name, str(served.version))
        return self._tasks[key]

    def _classify_template(self, template: str) -> str:
        if "{text}" not in template and "{prompt}" not in template:
            raise InvalidInput("the template must contain {text}")
        return template.replace("{text}", "{prompt}")

    def _check_classify(
        self, served: Served, texts: Sequence[str], labels: list[str], template: str
    ) -> list[int]:
        s = self.settings
        if not texts or len(texts) > s.max_texts:
            raise InvalidInput(f"send 1 to {s.max_texts} texts, not {len(texts)}")
        if len(labels) > s.max_labels:
            raise InvalidInput(f"{len(labels)} labels; the limit is {s.max_labels}")
        if any(not t.strip() for t in texts):
            raise InvalidInput("a text is empty")
        counts = [len(served.tokenizer.encode(template.replace("{prompt}", t))) for t in texts]
        if max(counts) > s.max_prompt_tokens:
            raise InvalidInput(f"a prompt has {max(counts)} tokens; the limit is {s.max_prompt_tokens}")
        return counts

    def _check_generate(self, served: Served, r: Request) -> None:
        s = self.settings
        given = [m.get("content", "") for m in r.messages] if r.messages else [r.prompt]
        if not any(text.strip() for text in given):
            raise InvalidInput("the prompt is empty")
        if not 1 <= r.max_tokens <= s.max_new_tokens:
            raise InvalidInput(f"max_tokens must be between 1 and {s.max_new_tokens}, got {r.max_tokens}")
        tokenizer = served.tokenizer
        if r.chat or r.messages is not None:
            if not getattr(tokenizer, "chat_template", None):
                raise InvalidInput(f"{served.name} has no chat template: send a raw prompt")
            messages = r.messages or [{"role": "user", "content": r.prompt}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            n = len(tokenizer.encode(text, add_special_tokens=False))
        else:
            n = len(tokenizer.encode(r.prompt))
        if n > s.max_prompt_tokens:
            raise InvalidInput(f"the prompt has {n} tokens; the limit is {s.max_prompt_tokens}")

    def _publish(self) -> None:
        info = self.info()
        self.metrics.serving(info.model, info.branch, info.version, info.resident_bytes, info.total_bytes)

    def _active_count(self) -> int:
        served = self._served
        return served.generator.active_count if served else 0


def _cut(tokenizer: Any, text: str, max_tokens: int) -> str:
    """The text cut to its first `max_tokens` tokens, exactly as the optimizer cuts it for training."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return text if len(ids) <= max_tokens else str(tokenizer.decode(ids[:max_tokens]))


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]
