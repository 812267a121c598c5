"""One SQLAlchemy session per transaction, and UTC times, for every table adapter."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session


def now() -> datetime:
    return datetime.now(UTC)


def utc(t: datetime) -> datetime:
    """SQLite drops the zone of a stored time; every backend returns aware UTC times."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One session, one transaction: committed on leaving, rolled back on an error."""
    with Session(engine, expire_on_commit=False) as s, s.begin():
        yield s
