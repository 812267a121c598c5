"""Answering customers: one served model, reached through the inference tier's client, every answer stored.

The model loads on a thread of its own, so the gateway answers (503, "loading") from its first second. Each
answer is pinned to the version serving when it starts, so the version can be named before the first piece
(a header, the chat page) and the inference tier guarantees that version computed every token, or fails.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from llmk.errors import FailedPrecondition, InvalidInput, NotFound, Unavailable
from services.inference.interface import Finished, GenerateRequest, InferenceClient
from services.support.interface import (
    Ask,
    Completion,
    Conversation,
    Conversations,
    Done,
    Feedback,
    Health,
    ModelCard,
    Turn,
)
from services.support.usecases.feedback import check_feedback

log = logging.getLogger("llmk.support")

DEFAULT_MAX_TOKENS = 256  # when a request names no max_tokens (and the server allows that many)


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int  # the most tokens one answer may ask for
    context_tokens: int  # prompt + answer must fit in this


class Streaming:
    """An Answer over the inference client's iterator; its first piece is read before it is handed out, so a
    refusal (a full queue, a prompt over the limit) is an error of the request, not of a half-sent stream."""

    def __init__(
        self,
        id: str,
        version: int,
        messages: tuple[Turn, ...],
        items: Iterator[str | Finished],
        on_done: Callable[[Streaming, str], None],
    ):
        self.id, self.version, self.messages = id, version, messages
        self.done: Done | None = None
        self._items, self._on_done = items, on_done
        self._started = time.perf_counter()
        self._first_token_s = 0.0
        self._pieces: list[str] = []
        self._first = self._next()

    def _next(self) -> str | Finished:
        try:
            return next(self._items)
        except StopIteration:
            raise Unavailable("the answer ended without a result") from None

    def __iter__(self) -> Iterator[str]:
        item = self._first
        while isinstance(item, str):
            if not self._pieces:
                self._first_token_s = time.perf_counter() - self._started
            self._pieces.append(item)
            yield item
            item = self._next()
        self._finish(item)

    def _finish(self, end: Finished) -> None:
        seconds = time.perf_counter() - self._started
        reason = "stop" if end.finish_reason in ("eos", "stop") else end.finish_reason
        first = self._first_token_s if self._pieces else seconds
        self.done = Done(
            self.id, end.version, reason, end.prompt_tokens, end.completion_tokens, first, seconds
        )
        self._on_done(self, "".join(self._pieces))

    def close(self) -> None:
        """The caller went away: the inference tier frees the sequence's slot."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


class SupportService:
    """The Support use cases over one served model (`name` or `name@ref`)."""

    def __init__(
        self,
        served: str,
        connect: Callable[[], InferenceClient],
        conversations: Conversations,
        limits: Limits,
    ):
        self.name, _, self.ref = served.partition("@")
        self._connect, self.conversations, self.limits = connect, conversations, limits
        self._client: InferenceClient | None = None
        self._error = ""
        self._loader = threading.Thread(target=self._load, name="llmk-support-load", daemon=True)

    # ---- lifecycle

    def start(self) -> None:
        """Load the model in the background; requests get Unavailable until it is served."""
        self._loader.start()

    def wait_ready(self, timeout: float | None = None) -> Health:
        self._loader.join(timeout)
        return self.health()

    def _load(self) -> None:
        try:
            self._client = self._connect()
        except Exception as e:  # reported by health and every request, never a crashed server
            log.exception("loading %s failed", self.name)
            self._error = f"loading {self.name} failed: {e}"

    def close(self) -> None:
        if self._loader.is_alive():
            self._loader.join()
        if self._client is not None:
            self._client.close()

    # ---- use cases

    def health(self) -> Health:
        if self._client is None:
            return Health(False, self.name, 0, self._error or "loading")
        return Health(True, self.name, self._client.version())

    def models(self) -> list[ModelCard]:
        return [ModelCard(self.name, self.health().version)]

    def answer(self, ask: Ask) -> Streaming:
        client = self._ready()
        pin = self._requested_pin(ask.model)
        max_tokens = self._max_tokens(ask)
        for _ in range(2):  # once more if a hot update lands between reading the version and asking for it
            version = client.version()
            request = self._request(ask, max_tokens, pin or str(version))
            try:
                return self._start(client, ask, request, version)
            except FailedPrecondition as e:
                if pin:
                    raise NotFound(f"model {ask.model} is not served here: {e}") from None
        raise Unavailable("the served version kept changing; retry")

    def feedback(self, feedback: Feedback) -> Feedback:
        check_feedback(feedback)
        return self.conversations.add_feedback(feedback)

    def conversation(self, completion_id: str) -> Conversation:
        return self.conversations.get(completion_id)

    # ---- steps

    def _ready(self) -> InferenceClient:
        if self._client is None:
            raise Unavailable(self._error or f"{self.name} is loading; retry in a few seconds")
        return self._client

    def _requested_pin(self, model: str) -> str:
        name, _, pin = model.partition("@")
        if name != self.name:
            raise NotFound(f"the model {model!r} does not exist here; this server serves {self.name!r}")
        return pin

    def _max_tokens(self, ask: Ask) -> int:
        most = min(self.limits.max_new_tokens, self.limits.context_tokens - 1)
        if ask.max_tokens is None:
            return min(DEFAULT_MAX_TOKENS, most)
        if not 1 <= ask.max_tokens <= most:
            raise InvalidInput(f"max_tokens must be between 1 and {most} (the context), got {ask.max_tokens}")
        return ask.max_tokens

    def _request(self, ask: Ask, max_tokens: int, pin: str) -> GenerateRequest:
        return GenerateRequest(
            ask.prompt,
            max_tokens=max_tokens,
            temperature=ask.temperature,
            seed=ask.seed,
            chat=ask.chat,
            messages=tuple((t.role, t.content) for t in ask.messages),
            top_p=ask.top_p,
            stop=ask.stop,
            pin=pin,
        )

    def _start(self, client: InferenceClient, ask: Ask, request: GenerateRequest, version: int) -> Streaming:
        answer_id = f"{'chatcmpl' if ask.chat else 'cmpl'}-{uuid.uuid4().hex}"
        messages = ask.messages or (Turn("user", ask.prompt),)
        return Streaming(answer_id, version, messages, client.generate(request), self._store)

    def _store(self, answer: Streaming, reply: str) -> None:
        done = answer.done
        assert done is not None
        completion = Completion(
            answer.id,
            self.name,
            answer.messages,
            reply,
            done.version,
            done.finish_reason,
            done.seconds * 1000,
        )
        self.conversations.add(completion)
