"""Completions and their feedback in the store's database (PostgreSQL or SQLite; migration 0005).

Feedback is keyed by its completion: a second thumb on one reply is refused by the key itself, so two
gateways answering the same click at once store it once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, String, Text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from llmk.errors import AlreadyExists, NotFound
from llmk.platform.database import Base
from llmk.platform.sessions import now, transaction, utc
from services.support.interface import Completion, Conversation, Feedback, Rating, Turn


class CompletionRow(Base):
    __tablename__ = "support_completions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    reply: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(BigInteger)
    finish_reason: Mapped[str] = mapped_column(String(32))
    latency_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class FeedbackRow(Base):
    __tablename__ = "support_feedback"
    completion_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("support_completions.id", ondelete="CASCADE"), primary_key=True
    )
    rating: Mapped[str] = mapped_column(String(8))
    correction: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ConversationsDb:
    """services.support.interface.Conversations; each method is one transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, c: Completion) -> None:
        row = CompletionRow(
            id=c.id,
            model=c.model,
            messages=[{"role": t.role, "content": t.content} for t in c.messages],
            reply=c.reply,
            version=c.version,
            finish_reason=c.finish_reason,
            latency_ms=c.latency_ms,
            created_at=c.created_at or now(),
        )
        with transaction(self.engine) as s:
            s.add(row)

    def get(self, completion_id: str) -> Conversation:
        with transaction(self.engine) as s:
            row = s.get(CompletionRow, completion_id)
            if row is None:
                raise NotFound(f"no completion with id {completion_id!r}")
            given = s.get(FeedbackRow, completion_id)
        return Conversation(_completion(row), _feedback(given) if given else None)

    def add_feedback(self, f: Feedback) -> Feedback:
        stored = Feedback(f.completion_id, f.rating, f.correction, f.created_at or now())
        row = FeedbackRow(
            completion_id=f.completion_id,
            rating=f.rating,
            correction=f.correction,
            created_at=stored.created_at,
        )
        try:
            with transaction(self.engine) as s:
                if s.get(CompletionRow, f.completion_id) is None:
                    raise NotFound(f"no completion with id {f.completion_id!r}")
                s.add(row)
        except IntegrityError:
            raise AlreadyExists(f"completion {f.completion_id!r} already has feedback") from None
        return stored


def _completion(r: CompletionRow) -> Completion:
    return Completion(
        r.id,
        r.model,
        tuple(Turn(m["role"], m["content"]) for m in r.messages),
        r.reply,
        int(r.version),
        r.finish_reason,
        float(r.latency_ms),
        utc(r.created_at),
    )


def _feedback(r: FeedbackRow) -> Feedback:
    rating: Rating = "up" if r.rating == "up" else "down"
    return Feedback(r.completion_id, rating, r.correction, utc(r.created_at))
