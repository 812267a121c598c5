"""The customer-service tier as its callers see it: the records it returns and the Protocols it is reached by.

A customer's message becomes an Ask; the answer streams as text pieces and ends in a Done that names the one
version that wrote it. Each finished answer is kept as a Completion, so feedback (a thumb, an agent's better
reply) can point at it by id.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

ROLES = ("system", "user", "assistant")
RATINGS = ("up", "down")
Rating = Literal["up", "down"]


@dataclass(frozen=True)
class Turn:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True)
class Ask:
    """One completion request, checked for shape at the edge; its limits are checked by the use case."""

    model: str  # NAME (follows what is served) or NAME@REF (that version, or an error)
    messages: tuple[Turn, ...] = ()  # a chat; empty for a raw-text completion
    prompt: str = ""  # a raw-text completion's prompt (no chat template)
    max_tokens: int | None = None  # None: as many as the server allows, up to 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def chat(self) -> bool:
        return bool(self.messages)


@dataclass(frozen=True)
class Done:
    """The end of an answer."""

    id: str  # the completion's id, for feedback
    version: int
    finish_reason: str  # stop | length (eos counts as stop, as OpenAI names it) | cancelled
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float  # seconds from the request to its first text piece (the whole answer if none)
    seconds: float


class Answer(Protocol):
    """A running answer: iterate for its text pieces; `done` is set after the last; close() cancels it."""

    id: str
    version: int  # the version this answer is pinned to (known before the first piece)
    done: Done | None

    def __iter__(self) -> Iterator[str]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Completion:
    """A stored answer: what was asked, what was replied, by which version, how fast."""

    id: str
    model: str
    messages: tuple[Turn, ...]  # the chat, or one user turn holding a raw prompt
    reply: str
    version: int
    finish_reason: str
    latency_ms: float
    created_at: datetime | None = None


@dataclass(frozen=True)
class Feedback:
    completion_id: str
    rating: Rating
    correction: str = ""  # an agent's better reply; empty when none
    created_at: datetime | None = None


@dataclass(frozen=True)
class ModelCard:
    id: str
    version: int  # 0 while loading
    created: int = 0


@dataclass(frozen=True)
class Health:
    ready: bool
    model: str
    version: int
    detail: str = ""  # why it is not ready


@dataclass(frozen=True)
class Conversation:
    completion: Completion
    feedback: Feedback | None = field(default=None)


class Conversations(Protocol):
    """Where completions and their feedback are kept (SQL tables in the store's database)."""

    def add(self, completion: Completion) -> None: ...
    def get(self, completion_id: str) -> Conversation:
        """NotFound for an id never stored."""
        ...

    def add_feedback(self, feedback: Feedback) -> Feedback:
        """NotFound for an unknown completion; AlreadyExists when it already has feedback."""
        ...


class Support(Protocol):
    """The use cases the HTTP gateway (and tests) call."""

    def health(self) -> Health: ...
    def models(self) -> list[ModelCard]: ...
    def answer(self, ask: Ask) -> Answer: ...
    def feedback(self, feedback: Feedback) -> Feedback: ...
    def conversation(self, completion_id: str) -> Conversation: ...


@dataclass(frozen=True)
class Pair:
    """A customer's message and the agent's reference reply."""

    instruction: str
    response: str


@dataclass(frozen=True)
class ReplyScore:
    """How well one version replies on a held-out set: the number feedback must move."""

    version: int
    rows: int
    nll_per_token: float  # mean negative log-likelihood of each reference reply's tokens, given its message
    tokens: int  # reference tokens scored
    rouge_l: float | None  # mean ROUGE-L F1 of greedy replies against the references; None when none made
    generated: int


class ReplyScorer(Protocol):
    """Log-likelihoods of replies after chat turns, under one stored version."""

    version: int

    def reply_logprobs(self, pairs: list[Pair]) -> list[tuple[float, int]]:
        """(sum of log p(reply token), number of reply tokens) for each pair, the message as one user turn."""
        ...
