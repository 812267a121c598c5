"""Feedback examples: checking them against a task, storing them as blobs, and hashing what a step used."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence

from llmk.domain.task_spec import CLASSIFICATION, TaskSpec
from llmk.errors import Corrupt, InvalidInput
from services.optimizer.interface import Example


def check_examples(task: TaskSpec, examples: Sequence[Example], limit: int) -> None:
    """Reject a submission that is empty, too large, or has an example the task cannot score."""
    if not examples:
        raise InvalidInput("empty batch: a submission needs at least one example")
    if len(examples) > limit:
        raise InvalidInput(f"{len(examples)} examples in one submission; the limit is {limit}")
    for i, example in enumerate(examples):
        _check_one(task, i, example)


def _check_one(task: TaskSpec, i: int, example: Example) -> None:
    for name, value in vars(example).items():
        if isinstance(value, str) and (why := _string_problem(value)):
            raise InvalidInput(f"example {i}: the {name} {why}")
    if task.kind == CLASSIFICATION:
        if not example.text:
            raise InvalidInput(f"example {i} has no text")
        if example.label not in task.labels:
            raise InvalidInput(
                f"example {i} has label {example.label!r}, which is not in the task's label set "
                f"{list(task.labels)}"
            )
    elif not example.prompt or not example.completion:
        raise InvalidInput(f"example {i}: a completion example needs both a prompt and a completion")


def _string_problem(text: str) -> str:
    """Why a database or a tokenizer would refuse `text` ("" when nothing would)."""
    if "\x00" in text:
        return "holds a NUL byte"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate ({text[e.start]!a})"
    return ""


def encode(examples: Iterable[Example]) -> bytes:
    rows = [{k: v for k, v in vars(e).items() if v} for e in examples]
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()


def decode(data: bytes) -> list[Example]:
    try:
        return [Example(**row) for row in json.loads(data)]
    except (ValueError, TypeError) as e:
        raise Corrupt(f"stored examples are unreadable: {e}") from None


def digest(parts: Iterable[bytes]) -> str:
    """A sha256 over the items a commit was trained on, so a version names exactly its data."""
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()
