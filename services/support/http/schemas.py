"""OpenAI's request and response shapes, as its `openai` client sends and reads them.

Requests are checked here, field by field, before anything runs: a wrong type, an unknown role, an empty
message, NaN or infinite numbers, too many stop strings each get a 400 naming the field. Fields the server
does not implement (n > 1, logprobs, echo) are refused rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

from llmk.errors import InvalidInput
from services.support.interface import Ask, Turn

MAX_STOPS = 4  # OpenAI's own limit
Number = Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False)]


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(Request):
    include_usage: StrictBool = False


class TextPart(Request):
    type: Literal["text"]
    text: str


class Message(Request):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(strict=True)] | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class Sampling(Request):
    model: Annotated[str, Field(strict=True, min_length=1, max_length=400)]
    max_tokens: StrictInt | None = None
    temperature: Annotated[Number, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[Number, Field(gt=0, le=1)] = 1.0
    stop: Annotated[str, Field(strict=True)] | list[Annotated[str, Field(strict=True)]] | None = None
    seed: StrictInt | None = None
    n: StrictInt = 1
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("a stop string is empty")
        return value

    @field_validator("n")
    @classmethod
    def _one(cls, value: int) -> int:
        if value != 1:
            raise ValueError("only n=1 is served")
        return value

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def to_ask(self, max_tokens: int | None, messages: tuple[Turn, ...] = (), prompt: str = "") -> Ask:
        return Ask(
            self.model,
            messages,
            prompt,
            max_tokens,
            float(self.temperature),
            float(self.top_p),
            self.stops(),
            self.seed,
        )


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1, max_length=256)]
    max_completion_tokens: StrictInt | None = None
    logprobs: StrictBool | None = None

    def ask(self) -> Ask:
        if self.logprobs:
            raise InvalidInput("logprobs are not served on chat completions")
        turns = tuple(Turn(m.role, m.text()) for m in self.messages)
        for i, turn in enumerate(turns):
            if not turn.content.strip():
                raise InvalidInput(f"messages[{i}].content is empty")
        wanted = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self.to_ask(wanted, messages=turns)


class CompletionRequest(Sampling):
    prompt: Annotated[str, Field(strict=True)] | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: StrictBool = False
    logprobs: StrictInt | None = None

    def ask(self) -> Ask:
        if self.echo or self.logprobs is not None:
            raise InvalidInput("echo and logprobs are not served on completions")
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        if not prompt.strip():
            raise InvalidInput("the prompt is empty")
        return self.to_ask(self.max_tokens, prompt=prompt)


class FeedbackRequest(Request):
    id: Annotated[str, Field(strict=True, min_length=1, max_length=64)]
    rating: Literal["up", "down"]
    correction: Annotated[str, Field(strict=True)] | None = None


# ---- answers


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmk"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelEntry]
