"""What the inference tier is asked and answers, whichever way it is reached (in-process or gRPC).

Every answer names the one version that computed it, as an integer id.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

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
