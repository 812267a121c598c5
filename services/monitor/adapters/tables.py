"""The monitor's records in PostgreSQL or SQLite (migration 0003). A score is unique per (model, item):
an item delivered twice (a worker killed after answering, a source read again) is stored once."""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, Integer, String, Text, UniqueConstraint, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from llmk.errors import NotFound
from llmk.platform.database import Base
from llmk.platform.sessions import now, transaction, utc
from services.monitor.interface import AlertRecord, Evidence, RejectRecord, ScoreRecord

Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only


class ScoreRow(Base):
    __tablename__ = "monitor_scores"
    __table_args__ = (UniqueConstraint("model", "item_id"),)
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200))
    item_id: Mapped[str] = mapped_column(String(200))
    run: Mapped[str] = mapped_column(String(64), index=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[float] = mapped_column(Float)
    tickers: Mapped[list[str]] = mapped_column(JSON)
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class RejectRow(Base):
    __tablename__ = "monitor_rejects"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    item_id: Mapped[str] = mapped_column(String(200))
    run: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str] = mapped_column(Text)
    rejected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AlertRow(Base):
    __tablename__ = "monitor_alerts"
    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    run: Mapped[str] = mapped_column(String(64), index=True)
    ticker: Mapped[str] = mapped_column(String(32))
    direction: Mapped[str] = mapped_column(String(32))
    opened: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cleared: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cleared_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    version: Mapped[int] = mapped_column(BigInteger)
    share: Mapped[float] = mapped_column(Float)
    mentions: Mapped[int] = mapped_column(BigInteger)
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class MonitorDb:
    """The MonitorRepo of services.monitor.interface; each method is one transaction."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def _tx(self) -> AbstractContextManager[Session]:
        return transaction(self.engine)

    def add_score(self, r: ScoreRecord) -> bool:
        row = ScoreRow(
            model=r.model,
            item_id=r.item_id,
            run=r.run,
            text=r.text,
            label=r.label,
            probabilities=r.probabilities,
            version=r.version,
            latency_ms=r.latency_ms,
            tickers=list(r.tickers),
            fields=r.fields,
            scored_at=r.scored_at or now(),
        )
        try:
            with self._tx() as s:
                s.add(row)
        except IntegrityError:
            return False
        return True

    def add_reject(self, r: RejectRecord) -> None:
        with self._tx() as s:
            s.add(
                RejectRow(
                    model=r.model,
                    item_id=r.item_id,
                    run=r.run,
                    reason=r.reason,
                    raw=r.raw,
                    rejected_at=r.rejected_at or now(),
                )
            )

    def open_alert(self, r: AlertRecord) -> AlertRecord:
        row = AlertRow(
            model=r.model,
            run=r.run,
            ticker=r.ticker,
            direction=r.direction,
            opened=r.opened,
            cleared=r.cleared,
            version=r.version,
            share=r.share,
            mentions=r.mentions,
            evidence=[dataclasses.asdict(e) for e in r.evidence],
        )
        with self._tx() as s:
            s.add(row)
            s.flush()
            return dataclasses.replace(r, id=row.id)

    def clear_alert(self, alert_id: int, cleared: datetime, reason: str) -> None:
        with self._tx() as s:
            row = s.get(AlertRow, alert_id)
            if row is None:
                raise NotFound(f"no alert {alert_id}")
            row.cleared = cleared
            row.cleared_reason = reason

    def scores(
        self, model: str | None, ticker: str | None, since: datetime | None, run: str | None = None
    ) -> list[ScoreRecord]:
        q = select(ScoreRow).order_by(ScoreRow.id)
        if model:
            q = q.where(ScoreRow.model == model)
        if since:
            q = q.where(ScoreRow.scored_at >= since)
        if run:
            q = q.where(ScoreRow.run == run)
        with self._tx() as s:
            rows = s.scalars(q).all()
        wanted = ticker.upper().lstrip("$") if ticker else None
        return [_score(r) for r in rows if wanted is None or wanted in r.tickers]

    def rejects(self, model: str | None, run: str | None = None) -> list[RejectRecord]:
        q = select(RejectRow).order_by(RejectRow.id)
        if model:
            q = q.where(RejectRow.model == model)
        if run:
            q = q.where(RejectRow.run == run)
        with self._tx() as s:
            return [
                RejectRecord(r.model, r.item_id, r.reason, r.raw, r.run, utc(r.rejected_at))
                for r in s.scalars(q)
            ]

    def alerts(self, model: str | None, run: str | None = None) -> list[AlertRecord]:
        q = select(AlertRow).order_by(AlertRow.id)
        if model:
            q = q.where(AlertRow.model == model)
        if run:
            q = q.where(AlertRow.run == run)
        with self._tx() as s:
            return [_alert(r) for r in s.scalars(q)]


def _score(r: ScoreRow) -> ScoreRecord:
    return ScoreRecord(
        r.model,
        r.item_id,
        r.text,
        r.label,
        dict(r.probabilities),
        int(r.version),
        float(r.latency_ms),
        tuple(r.tickers),
        dict(r.fields),
        r.run,
        utc(r.scored_at),
    )


def _alert(r: AlertRow) -> AlertRecord:
    evidence = [
        Evidence(
            e["item_id"],
            e["text"],
            e["label"],
            e["probability"],
            [tuple(t) for t in e["top_tokens"]],
            e.get("version", int(r.version)),
            e.get("scored_label", ""),
            e.get("scored_probability", 0.0),
            e.get("scored_version", 0),
        )
        for e in r.evidence
    ]
    cleared = utc(r.cleared) if r.cleared else None
    return AlertRecord(
        r.model,
        r.ticker,
        r.direction,
        utc(r.opened),
        int(r.version),
        r.share,
        int(r.mentions),
        evidence,
        cleared,
        r.run,
        int(r.id),
        r.cleared_reason or "",
    )
