"""Optimizer job use cases: create a job, feed it gradients or feedback, look at it, cancel it.

Every bad input is refused with a clear error before anything is stored; when it concerns an existing job
(or a job being created) the job is marked failed with the same message, so `llmk jobs` says why. The work
itself happens in `services.optimizer.usecases.training`, run by a queue worker that `schedule` wakes up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, NoReturn, Protocol

import torch

from llmk.domain.deltas import Delta
from llmk.domain.names import IDEMPOTENCY_KEY_MAX, NAME_MAX, any_match, check_text
from llmk.domain.versions import CommitInfo, Model, Ref, Version
from llmk.errors import FailedPrecondition, Frozen, InvalidInput, LlmkError
from services.optimizer.interface import (
    FAILED,
    GRADIENTS,
    LEARNS_FROM_EXAMPLES,
    REPLIES,
    Example,
    Job,
    JobInput,
    JobSpec,
    Submission,
    TensorMeta,
)
from services.optimizer.usecases import examples as example_blobs
from services.optimizer.usecases.replies import check_replies

SPARSE_PARTS = ("indices", "values")
LOSS_KEY = "::loss"


class ParameterStore(Protocol):
    """The store client calls a job makes: Store and GrpcStoreClient both fit."""

    def model(self, name: str) -> Model: ...
    def file(self, model: str, name: str) -> bytes: ...
    def version(self, model: str, ref: str | None = None) -> Version: ...
    def fetch(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> dict[str, torch.Tensor]: ...
    def commit(
        self,
        model: str,
        entries: Mapping[str, Delta],
        branch: str = "main",
        parent: int | None = None,
        info: CommitInfo = CommitInfo(),
    ) -> Version: ...
    def branch(self, model: str, name: str, from_ref: str | None = None) -> Ref: ...


class Blobs(Protocol):
    """Content-addressed files for job inputs and optimizer state (an object store of their own: a folder,
    or a prefix of the objects' bucket)."""

    def put_tensors(self, tensors: Mapping[str, torch.Tensor]) -> tuple[str, int]: ...
    def put_bytes(self, data: bytes) -> tuple[str, int]: ...
    def get_bytes(self, sha: str) -> bytes: ...
    def open_tensors(self, sha: str) -> Any: ...
    def remove(self, sha: str, referenced: Callable[[], bool]) -> bool: ...


class JobRepo(Protocol):
    """Job rows and their inputs; every method is one transaction."""

    def create(self, job: Job) -> Job: ...
    def get(self, job_id: str) -> Job: ...
    def by_key(self, key: str) -> Job | None: ...
    def find(self, model: str | None = None, limit: int = 100) -> list[Job]: ...
    def add_input(self, job_id: str, key: str, obj: str, count: int) -> tuple[JobInput, bool]: ...
    def input_by_key(self, job_id: str, key: str) -> JobInput | None: ...
    def inputs(self, job_id: str, after: int = 0) -> list[JobInput]: ...
    def acquire(self, job_id: str, owner: str, lease_seconds: float) -> float: ...
    def release(self, job_id: str, owner: str) -> None: ...
    def update(self, job_id: str, owner: str, expected_step: int, **fields: Any) -> Job: ...
    def fix_pool(self, job_id: str) -> Job: ...
    def finish(self, job_id: str, status: str, error: str = "") -> Job: ...


Schedule = Callable[[str], None]


class JobService:
    def __init__(
        self, repo: JobRepo, store: ParameterStore, blobs: Blobs, schedule: Schedule, max_examples: int
    ):
        self.repo = repo
        self.store = store
        self.blobs = blobs
        self.schedule = schedule
        self.max_examples = max_examples

    # jobs -------------------------------------------------------------------------------------
    def create_job(
        self, spec: JobSpec, validation: Sequence[Example] = (), idempotency_key: str | None = None
    ) -> Job:
        """Resolve the trainable tensors now, so a job for a missing model or frozen tensors fails at once."""
        check_text(idempotency_key or "", "idempotency key", IDEMPOTENCY_KEY_MAX)
        if idempotency_key and (existing := self.repo.by_key(idempotency_key)):
            return existing
        job = Job(uuid.uuid4().hex, spec, idempotency_key=idempotency_key)
        try:
            tensors = self._trainable(spec)
            held_out = self._validation(spec, validation)
        except LlmkError as e:
            self.repo.create(replace(job, status=FAILED, error=str(e)))
            raise type(e)(f"{e} (job {job.id} failed)") from None
        return self.repo.create(replace(job, tensors=tensors, validation=held_out))

    def get_job(self, job_id: str) -> Job:
        return self.repo.get(job_id)

    def list_jobs(self, model: str | None = None, limit: int = 100) -> list[Job]:
        if limit < 0:
            raise InvalidInput(f"limit must be 0 or more, got {limit}")
        check_text(model or "", "model name", NAME_MAX)
        return self.repo.find(model, limit)

    def cancel_job(self, job_id: str) -> Job:
        """Stop a job after its current step; its committed versions stay."""
        return self.repo.finish(job_id, "cancelled", "cancelled by request")

    def fail(self, job_id: str, reason: str) -> Job:
        return self.repo.finish(job_id, FAILED, reason)

    # inputs -----------------------------------------------------------------------------------
    def submit_feedback(self, job_id: str, examples: Sequence[Example], idempotency_key: str) -> Submission:
        job = self._accepting(job_id, LEARNS_FROM_EXAMPLES, idempotency_key)
        if isinstance(job, Submission):
            return job
        # A refused submission changes nothing: the job keeps what it accepted and takes the next one.
        self._check(job.spec, examples)
        sha, _ = self.blobs.put_bytes(example_blobs.encode(examples))
        return self._accept(job, idempotency_key, sha, len(examples))

    def submit_gradients(
        self, job_id: str, parts: Mapping[str, torch.Tensor], idempotency_key: str, loss: float | None = None
    ) -> Submission:
        """Gradients arrive as "NAME" (dense) or "NAME/indices" + "NAME/values" (sparse, flat positions)."""
        job = self._accepting(job_id, frozenset({GRADIENTS}), idempotency_key)
        if isinstance(job, Submission):
            return job
        try:
            grads = dense_gradients(parts, job.tensors)
            self._check_known(job, [n for n in grads if n not in job.tensors])
            bad = sorted(n for n, g in grads.items() if not bool(torch.isfinite(g).all()))
            if bad or (loss is not None and not torch.isfinite(torch.tensor(loss))):
                raise InvalidInput(
                    f"gradients contain NaN or Inf ({', '.join(bad) or 'loss'}); no update made"
                )
        except LlmkError as e:
            self._fail(job, e)
        pack = dict(parts) | ({LOSS_KEY: torch.tensor(float(loss))} if loss is not None else {})
        sha, _ = self.blobs.put_tensors(pack)
        return self._accept(job, idempotency_key, sha, 1)

    def _accepting(self, job_id: str, kinds: frozenset[str], key: str) -> Job | Submission:
        if not key:
            raise InvalidInput("every submission needs an idempotency key")
        check_text(key, "idempotency key", IDEMPOTENCY_KEY_MAX)
        job = self.repo.get(job_id)
        if (seen := self.repo.input_by_key(job_id, key)) is not None:
            return Submission(job, seen, duplicate=True)
        if job.done:
            raise FailedPrecondition(f"job {job_id} is {job.status}; submit to a new job")
        if job.spec.kind not in kinds:
            what = "gradients" if GRADIENTS in kinds else "examples"
            raise InvalidInput(f"job {job_id} is a {job.spec.kind} job; it does not take {what}")
        if job.pool is not None:
            raise FailedPrecondition(
                f"job {job_id} trains for a fixed {job.spec.steps} steps on the {job.pool} items it had when "
                "it started; submit to a new job"
            )
        return job

    def _accept(self, job: Job, key: str, sha: str, count: int) -> Submission:
        accepted, created = self.repo.add_input(job.id, key, sha, count)
        self.schedule(job.id)
        return Submission(self.repo.get(job.id), accepted, duplicate=not created)

    def _fail(self, job: Job, error: LlmkError) -> NoReturn:
        self.repo.finish(job.id, FAILED, str(error))
        raise error

    # checks -----------------------------------------------------------------------------------
    def _trainable(self, spec: JobSpec) -> dict[str, TensorMeta]:
        model = self.store.model(spec.model)
        patterns = spec.trainable or default_trainable(model)
        found: dict[str, torch.Tensor] = {}
        for pattern in patterns:
            tensors = self.store.fetch(spec.model, spec.branch, selector=pattern)
            if not tensors:
                raise InvalidInput(f"trainable pattern {pattern!r} matches no tensor of {spec.model!r}")
            found.update(tensors)
        frozen = sorted(n for n in found if any_match(n, model.frozen))
        if frozen:
            raise Frozen(
                f"trainable patterns select frozen tensor(s) of {spec.model!r}: {', '.join(frozen[:5])} "
                f"(frozen: {model.frozen})"
            )
        not_float = sorted(n for n, t in found.items() if not t.is_floating_point())
        if not_float:
            raise InvalidInput(f"only float tensors can be trained; not {', '.join(not_float[:5])}")
        return {n: TensorMeta(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in found.items()}

    def _validation(self, spec: JobSpec, validation: Sequence[Example]) -> str | None:
        if not validation:
            return None
        self._check(spec, validation)
        return self.blobs.put_bytes(example_blobs.encode(validation))[0]

    def _check(self, spec: JobSpec, examples: Sequence[Example]) -> None:
        if spec.kind == REPLIES:
            check_replies(examples, self.max_examples)
        elif spec.task is None:
            raise InvalidInput("examples need a feedback task to score them (or a replies job)")
        else:
            example_blobs.check_examples(spec.task, examples, self.max_examples)

    def _check_known(self, job: Job, names: list[str]) -> None:
        """Say precisely why a gradient names a tensor outside the job: frozen, untrained or unknown."""
        if not names:
            return
        model = self.store.model(job.spec.model)
        frozen = [n for n in names if any_match(n, model.frozen)]
        if frozen:
            raise Frozen(f"gradient for frozen tensor(s) {', '.join(frozen[:5])} of {job.spec.model!r}")
        ref = str(job.head_version) if job.head_version else job.spec.branch
        known = set(self.store.fetch(job.spec.model, ref, names=names))
        if known:
            raise InvalidInput(
                f"tensor(s) {', '.join(sorted(known)[:5])} are not trainable in job {job.id} "
                f"(trainable patterns: {list(job.spec.trainable)})"
            )
        raise InvalidInput(f"unknown tensor(s) {', '.join(names[:5])}: {job.spec.model!r} has no such tensor")


def default_trainable(model: Model) -> tuple[str, ...]:
    """The MLPs of the last two layers: cheap to train, and enough to adapt a classifier head."""
    layers = model.config.get("num_hidden_layers")
    if not isinstance(layers, int) or layers < 1:
        raise InvalidInput(f"{model.name!r} has no num_hidden_layers in its config; name trainable patterns")
    return tuple(f"model.layers.{i}.mlp" for i in range(max(0, layers - 2), layers))


def dense_gradients(
    parts: Mapping[str, torch.Tensor], tensors: Mapping[str, TensorMeta]
) -> dict[str, torch.Tensor]:
    """Named fp32 gradients from dense and sparse parts, each checked against its tensor's shape."""
    if not [k for k in parts if k != LOSS_KEY]:
        raise InvalidInput("empty batch: a gradient submission needs at least one tensor")
    out: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in parts.items():
        if key == LOSS_KEY:
            continue
        name, _, part = (
            key.rpartition("/") if key.endswith(tuple(f"/{p}" for p in SPARSE_PARTS)) else (key, "", "")
        )
        if part:
            sparse.setdefault(name, {})[part] = value
        else:
            out[name] = _dense(name, value, tensors.get(name))
    for name, pair in sparse.items():
        if name in out:
            raise InvalidInput(f"gradient {name!r} was sent both dense and sparse")
        out[name] = _scatter(name, pair, tensors.get(name))
    return out


def _dense(name: str, grad: torch.Tensor, meta: TensorMeta | None) -> torch.Tensor:
    if not grad.is_floating_point():
        raise InvalidInput(f"gradient {name!r} is {grad.dtype}, not a float tensor")
    if meta is not None and tuple(grad.shape) != meta.shape:
        raise InvalidInput(f"gradient {name!r} has shape {tuple(grad.shape)}; the tensor has {meta.shape}")
    return grad.float()


def _scatter(name: str, pair: dict[str, torch.Tensor], meta: TensorMeta | None) -> torch.Tensor:
    if set(pair) != set(SPARSE_PARTS):
        raise InvalidInput(f"sparse gradient {name!r} needs both {name}/indices and {name}/values")
    indices, values = pair["indices"], pair["values"]
    if indices.dtype not in (torch.int32, torch.int64) or indices.dim() != 1:
        raise InvalidInput(f"{name}/indices must be a 1-D int32 or int64 tensor")
    if not values.is_floating_point() or values.shape != indices.shape:
        raise InvalidInput(f"{name}/values must be float with one value per index ({indices.numel()})")
    if meta is None:
        return torch.zeros(0)  # an unknown tensor: the caller reports it by name
    numel = int(torch.Size(meta.shape).numel())
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
        raise InvalidInput(f"{name}/indices fall outside [0, {numel}) for shape {meta.shape}")
    grad = torch.zeros(numel, dtype=torch.float32)
    grad.index_add_(0, indices.long(), values.float())
    return grad.reshape(meta.shape)
