"""Running an optimizer job: one step at a time, each one persisted, so a killed worker's job resumes.

A step computes gradients (from feedback examples, or the pushed gradients), advances the optimizer, and
on committing steps turns the update into sparse entries, checks the validation gate, and commits them with
the idempotency key ``JOB:STEP``. Only then is the job row advanced (with the new optimizer state file), in
one compare-and-swap on the step number. A worker killed anywhere in between leaves the row at the previous
step: the next worker recomputes the same step, and the store answers the repeated key with the version
the first attempt committed, so every step is committed exactly once.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from llmk.domain.optim import optimizer_step
from llmk.domain.sparsify import ErrorFeedback
from llmk.domain.task_spec import CLASSIFICATION
from llmk.domain.versions import CommitInfo
from llmk.errors import AlreadyExists, Conflict, InvalidInput, LlmkError, NotFound, Unavailable
from services.optimizer.interface import (
    COMPLETED,
    FAILED,
    FEEDBACK,
    LEARNS_FROM_EXAMPLES,
    REPLIES,
    RUNNING,
    Example,
    Job,
    StepRecord,
)
from services.optimizer.usecases import examples as example_blobs
from services.optimizer.usecases.feedback import FeedbackTrainer, load_trainer
from services.optimizer.usecases.jobs import LOSS_KEY, Blobs, JobRepo, ParameterStore, dense_gradients
from services.optimizer.usecases.replies import ReplyTrainer, load_reply_trainer
from services.optimizer.usecases.sparse_updates import Update, compress, defer, discard_residuals

log = logging.getLogger(__name__)
IDLE, MORE, BUSY = "idle", "more", "busy"
OWNER = "::job/"  # a state file's marker key, followed by the job id


@dataclass(frozen=True)
class RunResult:
    status: (
        str  # IDLE: nothing to do until new input; MORE: run again (budget used, or stopping); BUSY: leased
    )
    retry_in: float = 0.0


@dataclass
class Session:
    """A job's working set in one worker process; valid while the job row is at (step, head)."""

    job_id: str
    step: int
    head: int
    state: dict[str, Tensor]
    params: dict[str, Tensor]
    trainer: FeedbackTrainer | ReplyTrainer | None
    items: list[Any] = field(default_factory=list)  # examples, or the blobs of gradient pushes
    loaded: int = 0  # inputs read so far (by sequence number)
    validation: list[Example] = field(default_factory=list)
    metric: float | None = None
    rebase: bool = False  # the serving branch moved under the job: reload from its new head
    served: dict[str, Tensor] | None = None  # with local steps: the head's values (params run ahead)


class JobRunner:
    def __init__(
        self,
        repo: JobRepo,
        store: ParameterStore,
        blobs: Blobs,
        lease_seconds: float = 120.0,
        budget_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        threads: int = 0,
    ):
        self.threads = threads  # torch's thread count is per calling thread: set where each job runs
        self.repo = repo
        self.store = store
        self.blobs = blobs
        self.lease_seconds = lease_seconds
        self.budget_seconds = budget_seconds
        self.clock = clock
        self.owner = uuid.uuid4().hex
        self._session: Session | None = None
        # set when the process is asked to stop: the running job ends after its current (persisted) step
        self.stopping = threading.Event()

    def run(self, job_id: str) -> RunResult:
        """Advance the job as far as its inputs and the time budget allow."""
        try:
            job = self.repo.get(job_id)
        except NotFound:
            log.warning("no job %s: dropping its task", job_id)
            return RunResult(IDLE)
        if job.done:
            return RunResult(IDLE)
        if self.stopping.is_set():  # stopping: the job goes back to the queue for another worker
            return RunResult(MORE)
        wait = self.repo.acquire(job_id, self.owner, self.lease_seconds)
        if wait > 0:
            return RunResult(BUSY, wait)
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            return self._run(job_id)
        except Unavailable:
            self._session = None
            raise
        except Conflict as e:  # the lease ran out and another worker took the job over
            log.warning("job %s moved on without this worker: %s", job_id, e)
            self._session = None
            return RunResult(IDLE)
        except LlmkError as e:
            self._session = None
            self.repo.finish(job_id, FAILED, str(e))
            return RunResult(IDLE)
        except BaseException:
            self._session = None
            raise
        finally:
            self.repo.release(job_id, self.owner)

    def _run(self, job_id: str) -> RunResult:
        deadline = self.clock() + self.budget_seconds
        while True:
            job = self.repo.get(job_id)
            if job.done:
                return RunResult(IDLE)
            if job.spec.steps is not None and job.step >= job.spec.steps:
                self.repo.finish(job_id, COMPLETED)
                return RunResult(IDLE)
            if not _may_step(job):
                return RunResult(IDLE)
            session, job = self._open(job)
            batch = self._batch(session, job, job.step)
            if batch is None:
                return RunResult(IDLE)
            self._step(session, job, batch)
            if self.repo.acquire(job_id, self.owner, self.lease_seconds) > 0:
                return RunResult(IDLE)
            if self.clock() >= deadline or self.stopping.is_set():
                return RunResult(MORE)

    # loading ------------------------------------------------------------------------------------
    def _open(self, job: Job) -> tuple[Session, Job]:
        s = self._session
        if not (s and s.job_id == job.id and s.step == job.step and s.head == job.head_version):
            s = self._session = self._load(job)
        self._read_inputs(s, job)
        finite = job.spec.kind in LEARNS_FROM_EXAMPLES and job.spec.steps is not None
        if finite and job.pool is None and s.items:
            job = self.repo.fix_pool(job.id)
            self._read_inputs(s, job)
        fields: dict[str, Any] = {}
        if job.head_version is None:
            fields |= {"head_version": s.head, "status": RUNNING}
        if s.trainer and s.validation and job.metric is None:
            fields["metric"] = s.trainer.evaluate(s.validation)
            if job.baseline is None:
                fields["baseline"] = fields["metric"]
        if fields:
            job = self.repo.update(job.id, self.owner, job.step, **fields)
        s.metric = job.metric
        return s, job

    def _load(self, job: Job) -> Session:
        spec = job.spec
        head = job.head_version or self.store.version(spec.model, spec.branch).id
        state = self._read_state(job.state_object)
        trainer: FeedbackTrainer | ReplyTrainer | None = None
        if spec.kind == FEEDBACK:
            assert spec.task is not None
            trainer = load_trainer(self.store, spec.model, str(head), spec.task, sorted(job.tensors))
            params = trainer.values()
        elif spec.kind == REPLIES:
            trainer = load_reply_trainer(self.store, spec.model, str(head), sorted(job.tensors))
            params = trainer.values()
        else:
            params = self.store.fetch(spec.model, str(head), names=sorted(job.tensors))
        held_out = example_blobs.decode(self.blobs.get_bytes(job.validation)) if job.validation else []
        s = Session(job.id, job.step, head, state, params, trainer, validation=held_out)
        if trainer is not None and spec.local_steps:
            s.served = {n: v.clone() for n, v in params.items()}
            self._run_ahead(s)
        return s

    def _read_state(self, sha: str | None) -> dict[str, Tensor]:
        if sha is None:
            return {}
        with self.blobs.open_tensors(sha) as f:
            return {key: f.get_tensor(key) for key in f.keys() if not key.startswith(OWNER)}

    def _write_state(self, job: Job, state: dict[str, Tensor]) -> str | None:
        """The state file, named by its hash; the job's id inside keeps two jobs from sharing one file."""
        if not state:
            return None
        return self.blobs.put_tensors({**state, OWNER + job.id: torch.zeros(0)})[0]

    def _read_inputs(self, s: Session, job: Job) -> None:
        for item in self.repo.inputs(job.id, after=s.loaded):
            if job.spec.kind in LEARNS_FROM_EXAMPLES:
                s.items.extend(example_blobs.decode(self.blobs.get_bytes(item.object)))
            else:
                s.items.append(item.object)
            s.loaded = item.seq
        if job.pool is not None:
            del s.items[job.pool :]

    def _batch(self, s: Session, job: Job, step: int) -> list[Any] | None:
        """The items of 0-based `step`: a fixed-size job wraps around its pool; an open one waits for more."""
        size = job.spec.batch_size
        if job.pool:
            return [s.items[(step * size + i) % job.pool] for i in range(size)]
        if len(s.items) < (step + 1) * size:
            return None
        earlier = s.items[: step * size]
        # seeded by the job and step, so a resumed or redelivered step rehearses the same examples
        rehearsed = random.Random(f"{job.id}:{step}").sample(earlier, min(job.spec.replay, len(earlier)))
        return s.items[step * size : (step + 1) * size] + rehearsed

    # stepping -----------------------------------------------------------------------------------
    def _step(self, s: Session, job: Job, batch: list[Any]) -> None:
        spec, number = job.spec, job.step + 1
        try:
            loss, grads = self._gradients(s, job, batch)
            if loss is not None and not math.isfinite(loss):
                raise InvalidInput(f"the loss is {loss}; the job stops with nothing committed")
            step_deltas = optimizer_step(spec.optimizer, s.params, grads, s.state)
            if number % spec.commit_every and number != spec.steps:
                defer(s.state, step_deltas)
                self._run_ahead(s)
                self._advance(s, job, number, None)
                return
            served = s.params if s.served is None else s.served
            update = compress(served, step_deltas, s.state, spec.topk, spec.rank)
            record = self._commit(s, job, number, update, loss, batch)
            if s.served is not None:
                if record.promoted:
                    s.served = {n: v.clone() for n, v in update.values.items()}
                self._run_ahead(s)
        except LlmkError as e:
            if isinstance(e, Unavailable | Conflict):
                raise
            raise type(e)(f"step {number}: {e}") from None
        self._advance(s, job, number, record)

    def _run_ahead(self, s: Session) -> None:
        """With local steps the job trains at the served values plus every update not yet committed (the
        residuals): a function of the head and the saved state alone, so a resumed job is where it was."""
        if s.served is None:
            return
        residual = ErrorFeedback(s.state).residual
        self._set(s, {n: v if (r := residual(n)) is None else v + r.to(v.dtype) for n, v in s.served.items()})

    def _gradients(self, s: Session, job: Job, batch: list[Any]) -> tuple[float | None, dict[str, Tensor]]:
        if s.trainer is not None:
            return s.trainer.loss_and_grads(batch)
        total: dict[str, Tensor] = {}
        losses = []
        for sha in batch:
            with self.blobs.open_tensors(sha) as f:
                parts = {key: f.get_tensor(key) for key in f.keys()}
            if LOSS_KEY in parts:
                losses.append(float(parts[LOSS_KEY]))
            for name, grad in dense_gradients(parts, job.tensors).items():
                total[name] = grad if name not in total else total[name] + grad
        grads = {
            n: total[n] / len(batch) if n in total else p.new_zeros(p.shape) for n, p in s.params.items()
        }
        return (sum(losses) / len(losses) if losses else None), grads

    def _commit(
        self, s: Session, job: Job, number: int, update: Update, loss: float | None, batch: list[Any]
    ) -> StepRecord:
        spec = job.spec
        before = {n: v.clone() for n, v in (s.params if s.served is None else s.served).items()}
        self._set(s, update.values)
        loss_after = s.trainer.loss(batch) if s.trainer else None
        metric = s.trainer.evaluate(s.validation) if s.trainer and s.validation else None
        passed, reason = self._gate(job, metric, s.metric)
        lineage = self._lineage(s, job, number, loss, loss_after, metric)
        record = StepRecord(
            step=number,
            version=None,
            branch=spec.branch,
            promoted=False,
            metric=metric,
            parent_metric=s.metric,
            loss_before=loss,
            loss_after=loss_after,
            examples_hash=lineage["examples_hash"],
            nnz=update.nnz,
            bytes=update.nbytes,
        )
        if not update.entries:
            self._set(s, before)
            return replace(record, reason="the update changed no parameter")
        version, branch, why = self._commit_version(s, job, number, update, passed, lineage)
        promoted = branch == spec.branch
        if not promoted:  # the update is dropped whole, with the remainder error feedback carried
            self._set(s, before)
            discard_residuals(s.state)
        return replace(record, version=version, branch=branch, promoted=promoted, reason=why or reason)

    def _gate(self, job: Job, metric: float | None, parent: float | None) -> tuple[bool, str]:
        if metric is None or parent is None or metric >= parent - job.spec.tolerance:
            return True, ""
        name = "macro-F1" if job.spec.task and job.spec.task.kind == CLASSIFICATION else "mean log-prob"
        return False, (
            f"held-out {name} {metric:.4f} is worse than its parent's {parent:.4f} by more than the "
            f"tolerance {job.spec.tolerance}"
        )

    def _commit_version(
        self, s: Session, job: Job, number: int, update: Update, passed: bool, lineage: dict[str, Any]
    ) -> tuple[int, str, str]:
        """Commit to the serving branch if the gate passed, else (or if it moved) to a candidate branch."""
        spec = job.spec
        info = CommitInfo(spec.author, f"job {job.id[:8]} step {number}", lineage, f"{job.id}:{number}")
        why = ""
        if passed:
            try:
                v = self.store.commit(spec.model, update.entries, spec.branch, s.head, info)
                if self.store.version(spec.model, spec.branch).id == v.id:
                    return v.id, spec.branch, ""
                why = "an earlier attempt of this step committed it to a candidate branch"
            except Conflict:
                s.rebase = True
                why = f"branch {spec.branch!r} moved while the step ran; the job continues from its new head"
        candidate = f"{spec.branch}-job-{job.id[:8]}-{number}"
        with suppress(AlreadyExists):  # a redelivered step: the store returns the first attempt's version
            self.store.branch(spec.model, candidate, str(s.head))
        v = self.store.commit(spec.model, update.entries, candidate, s.head, info)
        return v.id, candidate, why

    def _lineage(
        self,
        s: Session,
        job: Job,
        number: int,
        loss: float | None,
        loss_after: float | None,
        metric: float | None,
    ) -> dict[str, Any]:
        """What the version was trained on: every item since the previous commit, hashed."""
        first = (number - 1) // job.spec.commit_every * job.spec.commit_every
        items = [item for step in range(first, number) for item in self._batch(s, job, step) or []]
        encoded = (example_blobs.encode([i]) if isinstance(i, Example) else str(i).encode() for i in items)
        return {
            "job": job.id,
            "step": number,
            "examples": len(items),
            "examples_hash": example_blobs.digest(encoded),
            "loss_before": loss,
            "loss_after": loss_after,
            "metric": metric,
            "parent_metric": s.metric,
            "optimizer": job.spec.optimizer.kind,
            "topk": job.spec.topk,
            "rank": job.spec.rank,
        }

    def _set(self, s: Session, values: dict[str, Tensor]) -> None:
        if s.trainer is not None:
            s.trainer.set_values(values)
        else:
            s.params = values

    def _advance(self, s: Session, job: Job, number: int, record: StepRecord | None) -> None:
        """Persist the step: new optimizer state first, then the job row (compare-and-swap on the step)."""
        sha = self._write_state(job, s.state)
        fields: dict[str, Any] = {"step": number, "state_object": sha}
        if record is not None:
            fields["commits"] = [*job.commits, record]
            if record.promoted:
                fields |= {"head_version": record.version, "metric": record.metric}
        if s.rebase:
            fields |= {"head_version": self.store.version(job.spec.model, job.spec.branch).id, "metric": None}
        updated = self.repo.update(job.id, self.owner, job.step, **fields)
        if job.state_object and job.state_object != sha:
            self.blobs.remove(job.state_object, lambda: False)  # the row now names the new state
        s.step, s.head = number, updated.head_version or s.head
        if s.rebase:
            self._session = None


def _may_step(job: Job) -> bool:
    """Whether the job has inputs enough for its next step, judged from its row (no model loaded)."""
    if job.spec.kind in LEARNS_FROM_EXAMPLES and job.spec.steps is not None:
        return job.items > 0
    return job.items >= (job.step + 1) * job.spec.batch_size
