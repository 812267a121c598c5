"""What an optimizer job asks for and what it has done so far: plain records, validated on construction.

A job's specification is fixed when the job is created; its progress (step, head version, metric, the
versions it committed) changes as workers run it and is persisted after every step.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from llmk.domain.optim import OptimizerSpec
from llmk.domain.task_spec import TaskSpec
from llmk.errors import InvalidInput

if TYPE_CHECKING:
    import torch

GRADIENTS, FEEDBACK, REPLIES = "gradients", "feedback", "replies"
LEARNS_FROM_EXAMPLES = frozenset({FEEDBACK, REPLIES})  # kinds that train on examples (not pushed gradients)
UP, DOWN = "up", "down"
PENDING, RUNNING, COMPLETED, FAILED, CANCELLED = "pending", "running", "completed", "failed", "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidInput(message)


@dataclass(frozen=True)
class JobSpec:
    """Everything a job is asked to do. ``steps=None`` runs until cancelled, stepping as inputs arrive."""

    model: str
    kind: str = FEEDBACK
    branch: str = "main"
    trainable: tuple[str, ...] = ()
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    batch_size: int = 16
    commit_every: int = 1
    steps: int | None = None
    topk: float = 1.0
    rank: int = 0
    task: TaskSpec | None = None
    tolerance: float = 0.01
    author: str = "llmk-optimizer"
    # Learning from examples only. Deferred steps move the job's own weights (it trains at the served
    # values plus everything not yet committed), so each gradient is taken where training has got to.
    local_steps: bool = False
    replay: int = 0  # earlier examples rehearsed in each step of an open job, beside its new batch

    def __post_init__(self) -> None:
        object.__setattr__(self, "trainable", tuple(self.trainable))
        _require(bool(self.model), "a job needs a model name")
        _require(
            self.kind in (GRADIENTS, FEEDBACK, REPLIES),
            f"job kind must be {GRADIENTS}, {FEEDBACK} or {REPLIES}, got {self.kind!r}",
        )
        _require(bool(self.branch), "a job needs a serving branch")
        for name, value in (("batch_size", self.batch_size), ("commit_every", self.commit_every)):
            _require(isinstance(value, int) and value >= 1, f"{name} must be an integer >= 1, got {value!r}")
        _require(
            self.steps is None or (isinstance(self.steps, int) and self.steps >= 1),
            f"steps must be an integer >= 1 or unset, got {self.steps!r}",
        )
        _require(
            isinstance(self.topk, int | float) and 0 < self.topk <= 1,
            f"topk must be in (0, 1], got {self.topk!r}",
        )
        _require(
            isinstance(self.rank, int) and self.rank >= 0, f"rank must be an integer >= 0, got {self.rank!r}"
        )
        _require(
            isinstance(self.tolerance, int | float) and math.isfinite(self.tolerance),
            f"tolerance must be a finite number, got {self.tolerance!r}",
        )
        _require(
            isinstance(self.replay, int) and not isinstance(self.replay, bool) and self.replay >= 0,
            f"replay must be an integer >= 0, got {self.replay!r}",
        )
        _require(
            isinstance(self.local_steps, bool), f"local_steps must be true or false, got {self.local_steps!r}"
        )
        _require(
            self.kind in LEARNS_FROM_EXAMPLES or not (self.replay or self.local_steps),
            "replay and local_steps apply to jobs that learn from examples, not to pushed gradients",
        )
        _require(self.kind != FEEDBACK or self.task is not None, "a feedback job needs a task")
        _require(
            self.kind != GRADIENTS or bool(self.trainable),
            "a gradients job must name its trainable tensors (patterns)",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        task = data.get("task")
        return cls(
            **{k: v for k, v in data.items() if k not in ("optimizer", "task")},
            optimizer=OptimizerSpec(**data.get("optimizer", {})),
            task=TaskSpec(**task) if task else None,
        )


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class StepRecord:
    """One committing step: where its version went, and the lineage and gate figures behind it."""

    step: int
    version: int | None
    branch: str
    promoted: bool
    reason: str = ""
    metric: float | None = None
    parent_metric: float | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    examples_hash: str = ""
    nnz: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Job:
    id: str
    spec: JobSpec
    status: str = PENDING
    error: str = ""
    step: int = 0
    tensors: dict[str, TensorMeta] = field(default_factory=dict)
    validation: str | None = None  # blob holding the held-out examples
    items: int = 0  # examples or pushes received
    pool: int | None = None  # items a finite job trains on, fixed at its first step
    head_version: int | None = None
    metric: float | None = None  # held-out metric of head_version
    baseline: float | None = None  # held-out metric of the version the job started from
    state_object: str | None = None
    commits: list[StepRecord] = field(default_factory=list)
    idempotency_key: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class JobInput:
    """One accepted submission: a blob of examples or gradients, in arrival order."""

    job_id: str
    seq: int
    idempotency_key: str
    object: str
    count: int


@dataclass(frozen=True)
class Submission:
    job: Job
    input: JobInput
    duplicate: bool


@dataclass(frozen=True)
class Example:
    """Classification examples set text and label; completion examples set prompt and completion.

    Reply examples (a replies job) set prompt to the conversation before the reply as JSON turns
    (``[{"role": ..., "content": ...}]``), completion to the reply, and rating to up or down.
    """

    text: str = ""
    label: str = ""
    prompt: str = ""
    completion: str = ""
    rating: str = ""


def reply_example(turns: Sequence[tuple[str, str]], reply: str, rating: str) -> Example:
    """A rated reply: the conversation before it (role, content) turns, the reply, up or down."""
    conversation = [{"role": role, "content": content} for role, content in turns]
    return Example(prompt=json.dumps(conversation, ensure_ascii=False), completion=reply, rating=rating)


def tensor_meta(data: dict[str, Any]) -> dict[str, TensorMeta]:
    return {n: TensorMeta(tuple(m["shape"]), m["dtype"]) for n, m in data.items()}


def step_records(data: list[dict[str, Any]]) -> list[StepRecord]:
    return [StepRecord(**r) for r in data]


class JobsClient(Protocol):
    """The optimizer: jobs that turn feedback and gradients into committed versions."""

    def create_job(
        self, spec: JobSpec, validation: Sequence[Example] = (), idempotency_key: str | None = None
    ) -> Job: ...
    def submit_feedback(
        self, job_id: str, examples: Sequence[Example], idempotency_key: str
    ) -> Submission: ...
    def submit_gradients(
        self, job_id: str, parts: Mapping[str, torch.Tensor], idempotency_key: str, loss: float | None = None
    ) -> Submission: ...
    def get_job(self, job_id: str) -> Job: ...
    def list_jobs(self, model: str | None = None, limit: int = 100) -> list[Job]: ...
    def cancel_job(self, job_id: str) -> Job: ...
