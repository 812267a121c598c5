"""Optimizer jobs in PostgreSQL or SQLite (migration 0002). Workers coordinate through a lease and a
compare-and-swap on the step number, so two workers can never both advance a job."""

from __future__ import annotations

import dataclasses
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from llmk.domain.names import check_text
from llmk.errors import Conflict, FailedPrecondition, NotFound
from llmk.platform.database import Base
from llmk.platform.sessions import transaction, utc
from services.optimizer.interface import (
    TERMINAL,
    Job,
    JobInput,
    JobSpec,
    StepRecord,
    step_records,
    tensor_meta,
)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), index=True)
    error: Mapped[str] = mapped_column(Text)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    tensors: Mapped[dict[str, Any]] = mapped_column(JSON)
    validation: Mapped[str | None] = mapped_column(String(64))
    items: Mapped[int] = mapped_column(BigInteger)
    pool: Mapped[int | None] = mapped_column(BigInteger)
    step: Mapped[int] = mapped_column(BigInteger)
    head_version: Mapped[int | None] = mapped_column(BigInteger)
    metric: Mapped[float | None] = mapped_column(Float)
    baseline: Mapped[float | None] = mapped_column(Float)
    state_object: Mapped[str | None] = mapped_column(String(64))
    commits: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InputRow(Base):
    __tablename__ = "job_inputs"
    __table_args__ = (UniqueConstraint("job_id", "idempotency_key"),)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    object: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobsDb:
    """The JobRepo of services.optimizer.usecases.jobs; each public method is one transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def _tx(self) -> AbstractContextManager[Session]:
        return transaction(self.engine)

    @staticmethod
    def _row(s: Session, job_id: str, lock: bool = False) -> JobRow:
        check_text(job_id, "job id", 32)  # the id column's width; PostgreSQL would refuse a NUL with its SQL
        row = s.get(JobRow, job_id, with_for_update=lock)
        if row is None:
            raise NotFound(f"unknown job {job_id!r}")
        return row

    # jobs -------------------------------------------------------------------------------------
    def create(self, job: Job) -> Job:
        now = datetime.now(UTC)
        try:
            with self._tx() as s:
                row = JobRow(id=job.id, created_at=now, updated_at=now, **_fields(job))
                s.add(row)
                s.flush()
                return _job(row)
        except IntegrityError:
            if job.idempotency_key and (existing := self.by_key(job.idempotency_key)):
                return existing
            raise

    def get(self, job_id: str) -> Job:
        with self._tx() as s:
            return _job(self._row(s, job_id))

    def by_key(self, key: str) -> Job | None:
        with self._tx() as s:
            row = s.scalar(select(JobRow).where(JobRow.idempotency_key == key))
            return _job(row) if row else None

    def find(self, model: str | None = None, limit: int = 100) -> list[Job]:
        with self._tx() as s:
            query = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
            if model:
                query = query.where(JobRow.model == model)
            return [_job(r) for r in s.scalars(query)]

    def update(self, job_id: str, owner: str, expected_step: int, **fields: Any) -> Job:
        """Change a job only if `owner` holds its lease and it is still at `expected_step`."""
        with self._tx() as s:
            row = self._row(s, job_id, lock=True)
            if row.owner != owner or row.step != expected_step:
                raise Conflict(
                    f"job {job_id} is at step {row.step} under another worker (expected step {expected_step})"
                )
            for key, value in fields.items():
                if key == "status" and row.status in TERMINAL:
                    continue  # cancelled while its step ran: a finished job keeps its outcome
                setattr(row, key, _column_value(value))
            row.updated_at = datetime.now(UTC)
            return _job(row)

    def fix_pool(self, job_id: str) -> Job:
        """A fixed-size job trains on what it has now; later submissions are refused."""
        with self._tx() as s:
            row = self._row(s, job_id, lock=True)
            if row.pool is None:
                row.pool = row.items
            return _job(row)

    def finish(self, job_id: str, status: str, error: str = "") -> Job:
        """Move a job to a terminal status; a job already finished keeps its first outcome."""
        with self._tx() as s:
            row = self._row(s, job_id, lock=True)
            if row.status not in TERMINAL:
                row.status, row.error, row.updated_at = status, error, datetime.now(UTC)
            return _job(row)

    # leases -----------------------------------------------------------------------------------
    def acquire(self, job_id: str, owner: str, lease_seconds: float) -> float:
        """Take or renew the job's lease: 0 when held, else the seconds until the current holder's lapses."""
        with self._tx() as s:
            row = self._row(s, job_id, lock=True)
            now = time.time()
            if row.owner not in (None, owner) and (row.lease_until or 0.0) > now:
                return float(row.lease_until or 0.0) - now
            row.owner, row.lease_until = owner, now + lease_seconds
            return 0.0

    def release(self, job_id: str, owner: str) -> None:
        with self._tx() as s:
            row = self._row(s, job_id, lock=True)
            if row.owner == owner:
                row.owner, row.lease_until = None, None

    # inputs -----------------------------------------------------------------------------------
    def add_input(self, job_id: str, key: str, obj: str, count: int) -> tuple[JobInput, bool]:
        with self._tx() as s:
            row = self._row(s, job_id, lock=True)
            existing = self._input(s, job_id, key)
            if existing is not None:
                return _input(existing), False
            if row.status in TERMINAL:
                raise FailedPrecondition(f"job {job_id} is {row.status}; submit to a new job")
            if row.pool is not None:
                raise FailedPrecondition(
                    f"job {job_id} already started on its {row.pool} items; submit to a new job"
                )
            last = s.scalar(select(func.max(InputRow.seq)).where(InputRow.job_id == job_id)) or 0
            added = InputRow(
                job_id=job_id,
                seq=last + 1,
                idempotency_key=key,
                object=obj,
                count=count,
                created_at=datetime.now(UTC),
            )
            s.add(added)
            row.items += count
            row.updated_at = datetime.now(UTC)
            return _input(added), True

    def input_by_key(self, job_id: str, key: str) -> JobInput | None:
        with self._tx() as s:
            found = self._input(s, job_id, key)
            return _input(found) if found else None

    def inputs(self, job_id: str, after: int = 0) -> list[JobInput]:
        with self._tx() as s:
            query = (
                select(InputRow).where(InputRow.job_id == job_id, InputRow.seq > after).order_by(InputRow.seq)
            )
            return [_input(r) for r in s.scalars(query)]

    @staticmethod
    def _input(s: Session, job_id: str, key: str) -> InputRow | None:
        return s.scalar(select(InputRow).where(InputRow.job_id == job_id, InputRow.idempotency_key == key))


def _fields(job: Job) -> dict[str, Any]:
    return {
        "idempotency_key": job.idempotency_key,
        "model": job.spec.model,
        "kind": job.spec.kind,
        "status": job.status,
        "error": job.error,
        "spec": job.spec.to_dict(),
        "tensors": {n: {"shape": list(m.shape), "dtype": m.dtype} for n, m in job.tensors.items()},
        "validation": job.validation,
        "items": job.items,
        "pool": job.pool,
        "step": job.step,
        "head_version": job.head_version,
        "metric": job.metric,
        "baseline": job.baseline,
        "state_object": job.state_object,
        "commits": _column_value(job.commits),
    }


def _column_value(value: Any) -> Any:
    if isinstance(value, list):
        return [dataclasses.asdict(v) if isinstance(v, StepRecord) else v for v in value]
    return value


def _job(r: JobRow) -> Job:
    return Job(
        id=r.id,
        spec=JobSpec.from_dict(r.spec),
        status=r.status,
        error=r.error,
        step=r.step,
        tensors=tensor_meta(r.tensors),
        validation=r.validation,
        items=r.items,
        pool=r.pool,
        head_version=r.head_version,
        metric=r.metric,
        baseline=r.baseline,
        state_object=r.state_object,
        commits=step_records(r.commits),
        idempotency_key=r.idempotency_key,
        created_at=utc(r.created_at),
        updated_at=utc(r.updated_at),
    )


def _input(r: InputRow) -> JobInput:
    return JobInput(r.job_id, r.seq, r.idempotency_key, r.object, r.count)
