"""The task a model serves, stored with the model so that what the optimizer learns is what workers serve.

A task (labels in order, prompt template, how many tokens of a text count) is a versioned part of the
model: `set_task` commits a version that changes no tensor and carries the task in its metadata, and the
task of any version is the one set by its nearest ancestor. Training, serving and the monitor all read it
from here, so a classify with no labels or template scores exactly what the optimizer trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from llmk.domain.deltas import Delta
from llmk.domain.versions import CommitInfo, Version
from llmk.errors import InvalidInput, NotFound

CLASSIFICATION, COMPLETION = "classification", "completion"
TEXT = "{text}"


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidInput(message)


@dataclass(frozen=True)
class TaskSpec:
    """How feedback examples become a loss and a held-out metric.

    Classification scores every label string (``label_prefix + label``) by its log-probability after the
    prompt ``template`` with the example's text in place of ``{text}``; completion scores the target text
    after the prompt. ``max_tokens`` cuts an example's text (or prompt) to its first tokens.
    """

    kind: str = CLASSIFICATION
    labels: tuple[str, ...] = ()
    template: str = "{text}\nLabel:"
    max_tokens: int = 64
    label_prefix: str = " "

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        _require(
            self.kind in (CLASSIFICATION, COMPLETION),
            f"task kind must be {CLASSIFICATION} or {COMPLETION}, got {self.kind!r}",
        )
        _require(TEXT in self.template, f"the task template must contain {TEXT}, got {self.template!r}")
        _require(
            isinstance(self.max_tokens, int) and 1 <= self.max_tokens <= 4096,
            f"max_tokens must be in [1, 4096], got {self.max_tokens!r}",
        )
        if self.kind == CLASSIFICATION:
            _require(
                len(self.labels) >= 2, f"a classification task needs at least 2 labels, got {self.labels}"
            )
            _require(all(label.strip() for label in self.labels), "labels must not be empty")
            _require(len(set(self.labels)) == len(self.labels), f"labels repeat: {self.labels}")

    def prompt(self, text: str) -> str:
        return self.template.replace(TEXT, text)


SENTIMENT_TEMPLATE = (
    "Is the sentiment of this financial news negative, positive or neutral?\nNews: {text}\nSentiment:"
)
TASKS: dict[str, TaskSpec] = {
    "sentiment": TaskSpec(CLASSIFICATION, ("negative", "positive", "neutral"), SENTIMENT_TEMPLATE, 32),
    "completion": TaskSpec(COMPLETION, (), TEXT, 128, ""),
}


TASK_KEY = "task"
HISTORY_LIMIT = 100_000  # versions walked back to find the task; far beyond any real history


class VersionLog(Protocol):
    """What reading a task needs: a store's history (the metadata client suffices, in-process or gRPC)."""

    def log(self, model: str, ref: str | None = None, limit: int = 100) -> list[Version]: ...


class VersionHistory(VersionLog, Protocol):
    """What setting a task needs: the history and a commit."""

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


def task_of(store: VersionLog, model: str, ref: str | None = None) -> TaskSpec | None:
    """The task in force at `ref`: set by the version itself or its nearest ancestor; None if never set."""
    for version in store.log(model, ref, HISTORY_LIMIT):
        if TASK_KEY in version.metadata:
            return decode_task(version.metadata[TASK_KEY])
    return None


TRAINED_BY = "job"  # metadata of a version an optimizer job committed to the serving branch (gate passed)


def training_note(store: VersionLog, model: str, ref: str | None = None) -> str:
    """Whether feedback has trained the version at `ref` for its task: the nearest ancestor an optimizer
    job committed after the task was set (a job commits to the serving branch only when its held-out gate
    passed), with its gate figure; otherwise a warning that the served answers are zero-shot."""
    for version in store.log(model, ref, HISTORY_LIMIT):
        if TRAINED_BY in version.metadata:
            metric = version.metadata.get("metric")
            figure = f", held-out gate metric {metric:.3f}" if isinstance(metric, int | float) else ""
            return f"trained by feedback: version {version.id} passed its gate{figure}"
        if TASK_KEY in version.metadata:
            break
    return (
        "untrained for this task: no version trained by feedback has passed its gate yet, so answers are "
        "zero-shot (send labelled feedback: llmk feedback add)"
    )


def require_task(store: VersionLog, model: str, ref: str | None = None) -> TaskSpec:
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

    if task.kind != CLASSIFICATION:
        raise InvalidInput("only classification tasks are stored with a model")
    message = f"task: {', '.join(task.labels)}"
    info = CommitInfo(author, message, {TASK_KEY: encode_task(task)})
    return store.commit(model, {}, branch, None, info)
