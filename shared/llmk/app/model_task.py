"""The task a model serves, stored with the model so that what the optimizer learns is what workers serve.

A task (labels in order, prompt template, how many tokens of a text count) is a versioned part of the
model: `set_task` commits a version that changes no tensor and carries the task in its metadata, and the
task of any version is the one set by its nearest ancestor. Training, serving and the monitor all read it
from here, so a classify with no labels or template scores exactly what the optimizer trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from llmk.app.job_records import CLASSIFICATION, TASKS, TaskSpec
from llmk.domain.deltas import Delta
from llmk.domain.versions import Version
from llmk.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from llmk.app.store import CommitInfo

TASK_KEY = "task"
HISTORY_LIMIT = 100_000  # versions walked back to find the task; far beyond any real history


class VersionHistory(Protocol):
    """What reading and setting a task needs from a store client (in-process or gRPC)."""

    def log(self, model: str, ref: str | None = None, limit: int = 100) -> list[Version]: ...
    def commit(
        self,
        model: str,
        entries: Mapping[str, Delta],
        branch: str = "main",
        parent: int | None = None,
        info: CommitInfo = ...,
    ) -> Version: ...


def encode_task(task: TaskSpec) -> dict[str, Any]:
    return {**dataclasses.asdict(task), "labels": list(task.labels)}


def decode_task(data: Mapping[str, Any]) -> TaskSpec:
    """A TaskSpec from stored or user-given fields; InvalidInput says what is wrong."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"a task is a JSON object, not {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TaskSpec)}
    if unknown := sorted(set(data) - known):
        raise InvalidInput(f"unknown task field(s) {unknown}; known: {sorted(known)}")
    try:
        return TaskSpec(**dict(data))
    except TypeError as e:
        raise InvalidInput(f"bad task: {e}") from None


def packaged(name: str) -> TaskSpec:
    """A task shipped with llmk (`sentiment`: finance news, negative/positive/neutral)."""
    if name not in TASKS or TASKS[name].kind != CLASSIFICATION:
        shipped = sorted(n for n, t in TASKS.items() if t.kind == CLASSIFICATION)
        raise InvalidInput(f"unknown task {name!r}; packaged tasks: {', '.join(shipped)}")
    return TASKS[name]


def task_of(store: VersionHistory, model: str, ref: str | None = None) -> TaskSpec | None:
    """The task in force at `ref`: set by the version itself or its nearest ancestor; None if never set."""
    for version in store.log(model, ref, HISTORY_LIMIT):
        if TASK_KEY in version.metadata:
            return decode_task(version.metadata[TASK_KEY])
    return None


def require_task(store: VersionHistory, model: str, ref: str | None = None) -> TaskSpec:
    task = task_of(store, model, ref)
    if task is None:
        raise NotFound(
            f"model {model!r} has no task at {ref or 'main'}: set one with `llmk task set {model} "
            "--labels a,b,c --template '...{text}...'` or pass --labels and --template"
        )
    return task


def set_task(
    store: VersionHistory, model: str, task: TaskSpec, branch: str = "main", author: str = "llmk"
) -> Version:
    """A new version of `branch` that changes no tensor and sets the task its descendants serve."""
    from llmk.app.store import CommitInfo  # the store module validates tasks with this one

    if task.kind != CLASSIFICATION:
        raise InvalidInput("only classification tasks are stored with a model")
    message = f"task: {', '.join(task.labels)}"
    info = CommitInfo(author, message, {TASK_KEY: encode_task(task)})
    return store.commit(model, {}, branch, None, info)
