"""What the inference tier is asked and answers, whichever way it is reached (in-process or gRPC).

Every answer names the one version that computed it, as an integer id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llmk.domain.sampling import check_sampling
from llmk.errors import InvalidInput


@dataclass(frozen=True)
class LabelScores:
    """One text's answer: the most probable label and every label's probability."""

    label: str
    probabilities: dict[str, float]
    prompt_tokens: int


@dataclass(frozen=True)
class Classification:
    version: int
    results: list[LabelScores]  # in the order of the texts

    def encode(self) -> dict[str, Any]:
        """The shape classify answers take in JSON and on the inference queue."""
        return {"version": self.version, "results": [dataclasses.asdict(r) for r in self.results]}


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    seed: int | None = None
    chat: bool = True  # apply the model's chat template to the prompt as one user turn
    messages: tuple[
        tuple[str, str], ...
    ] = ()  # (role, content) turns: the chat template over them, not prompt
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    pin: str = ""  # a version (id, tag or branch) this answer must come from, besides the client's own ref

    def __post_init__(self) -> None:
        # checked here, not only by the worker: the gRPC request reads 0 as "the default"
        if self.max_tokens < 1:
            raise InvalidInput(f"max_tokens must be at least 1, got {self.max_tokens}")
        check_sampling(self.temperature)


@dataclass(frozen=True)
class Finished:
    """The last item of a generation, after its text pieces."""

    version: int
    finish_reason: str  # stop | length | eos | cancelled
    prompt_tokens: int
    completion_tokens: int


class InferenceClient(Protocol):
    """One model served at NAME@REF: a pinned REF (id, tag or branch) must be the version that answers."""

    def classify(
        self, texts: Sequence[str], labels: Sequence[str] = (), template: str = ""
    ) -> Classification:
        """Empty labels and template: the model's stored task (or the worker's defaults)."""
        ...

    def generate(self, request: GenerateRequest) -> Iterator[str | Finished]:
        """Text pieces as they are produced, then one Finished. Closing the iterator early cancels it."""
        ...

    def version(self) -> int:
        """The version answering now (0 when none): pin a request to it to know its version first."""
        ...

    def close(self) -> None: ...
