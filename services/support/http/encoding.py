"""An answer in OpenAI's shapes: one JSON body, or server-sent events of chunks ending in `data: [DONE]`.

The stream reads the answer's pieces on worker threads (the inference client blocks); when the client goes
away, sse-starlette cancels the event generator and its `finally` closes the answer, which frees the
sequence's slot in the inference tier at its next step.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread

from llmk.errors import LlmkError
from services.support.http.errors import error_body, status_of
from services.support.http.metrics import ApiMetrics
from services.support.interface import Answer, Done

_END = object()


class Shape:
    """How one kind of answer (chat or raw text) is written."""

    def __init__(self, chat: bool, model: str, fingerprint: str, answer_id: str):
        self.chat = chat
        self.head = {
            "id": answer_id,
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": fingerprint,
        }

    def whole(self, text: str, done: Done) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": done.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self.head, "object": kind, "choices": [choice], "usage": usage(done)}

    def chunk(self, text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            choice["delta"] = delta | ({"content": text} if text is not None else {})
        else:
            choice["text"] = text or ""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self.head, "object": kind, "choices": [choice]}

    def usage_chunk(self, done: Done) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self.head, "object": kind, "choices": [], "usage": usage(done)}


def usage(done: Done) -> dict[str, int]:
    total = done.prompt_tokens + done.completion_tokens
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": total,
    }


async def events(
    answer: Answer, shape: Shape, include_usage: bool, metrics: ApiMetrics
) -> AsyncIterator[str]:
    """The SSE `data:` payloads of a streamed answer."""
    pieces = iter(answer)
    metrics.streams.inc()
    try:
        first = True
        while (piece := await anyio.to_thread.run_sync(next, pieces, _END)) is not _END:
            yield json.dumps(shape.chunk(str(piece), None, first))
            first = False
        done = answer.done
        assert done is not None
        metrics.answered(done)
        yield json.dumps(shape.chunk(None if shape.chat else "", done.finish_reason, first))
        if include_usage:
            yield json.dumps(shape.usage_chunk(done))
    except LlmkError as e:  # the headers are sent: the error goes in the stream, as OpenAI's servers do
        _, kind, code = status_of(e)
        yield json.dumps(error_body(str(e), kind, code))
    finally:
        metrics.streams.dec()
        if answer.done is None:
            metrics.cancelled.inc()
            answer.close()
    yield "[DONE]"
