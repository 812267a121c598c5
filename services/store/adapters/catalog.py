"""PostgreSQL or SQLite metadata through SQLAlchemy 2. Branch heads move by compare-and-swap."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmk.domain.names import NAME_MAX, check_text
from llmk.domain.versions import Entry, Model, Ref, Snapshot, Version
from llmk.errors import AlreadyExists, Conflict, NotFound
from llmk.platform.database import EntryRow, ModelRow, RefRow, SnapshotRow, VersionRow
from llmk.platform.sessions import now, transaction, utc
from services.store.adapters.entry_cache import EntryCache

# A version's basis chain back to the first version holding a snapshot (or to the root).
_CHAIN = text("""
    WITH RECURSIVE chain(id, basis_id, depth, snap) AS (
        SELECT v.id, v.basis_id, 0, s.object FROM versions v
            LEFT JOIN snapshots s ON s.version_id = v.id WHERE v.id = :v
        UNION ALL
        SELECT v.id, v.basis_id, c.depth + 1, s.object FROM versions v
            JOIN chain c ON v.id = c.basis_id AND c.snap IS NULL
            LEFT JOIN snapshots s ON s.version_id = v.id
    )
    SELECT id, snap FROM chain ORDER BY depth
""")

# A version's whole basis chain, snapshots ignored, back to `stop` (included) or to the root.
_BASIS = text("""
    WITH RECURSIVE chain(id, basis_id, depth) AS (
        SELECT v.id, v.basis_id, 0 FROM versions v WHERE v.id = :v
        UNION ALL
        SELECT v.id, v.basis_id, c.depth + 1 FROM versions v
            JOIN chain c ON v.id = c.basis_id AND c.id <> :stop
    )
    SELECT id FROM chain ORDER BY depth
""")


class Catalog:
    """Every metadata read and write the store makes; each public method is one transaction."""

    def __init__(self, engine: Engine, cached_versions: int = 256):
        self.engine = engine
        self._entry_cache = EntryCache(cached_versions)  # entries of committed versions never change

    def _tx(self) -> AbstractContextManager[Session]:
        return transaction(self.engine)

    # models -----------------------------------------------------------------
    def create_model(self, name: str, config: dict[str, Any], files: dict[str, str]) -> Model:
        try:
            with self._tx() as s:
                row = ModelRow(name=name, created_at=now(), config=config, files=files, frozen=[])
                s.add(row)
                s.flush()
                return _model(row)
        except IntegrityError:
            raise AlreadyExists(f"model {name!r} already exists") from None

    def model(self, name: str) -> Model:
        with self._tx() as s:
            return _model(self._model_row(s, name))

    def models(self) -> list[Model]:
        with self._tx() as s:
            return [_model(r) for r in s.scalars(select(ModelRow).order_by(ModelRow.name))]

    def update_model(self, name: str, **fields: Any) -> Model:
        with self._tx() as s:
            row = self._model_row(s, name)
            for k, v in fields.items():
                setattr(row, k, v)
            return _model(row)

    @staticmethod
    def _model_row(s: Session, name: str) -> ModelRow:
        check_text(name, "model name", NAME_MAX)  # PostgreSQL would refuse a NUL with its SQL
        row = s.scalar(select(ModelRow).where(ModelRow.name == name))
        if row is None:
            raise NotFound(f"unknown model {name!r}")
        return row

    # versions -----------------------------------------------------------------
    def add_version(
        self, model: str, branch: str, expected: int | None, version: Version, create_branch: bool = False
    ) -> Version:
        """Insert a version and its entries, then move `branch` from `expected` to it, atomically."""
        try:
            with self._tx() as s:
                m = self._model_row(s, model)
                row = VersionRow(
                    model_id=m.id,
                    parent_id=version.parent,
                    basis_id=version.basis,
                    author=version.author,
                    message=version.message,
                    created_at=now(),
                    meta=version.metadata,
                    idempotency_key=version.idempotency_key,
                )
                s.add(row)
                s.flush()
                if version.entries:  # one multi-row INSERT, not a unit of work per row
                    s.execute(insert(EntryRow), _entry_rows(row.id, version.entries))
                self._move(s, m.id, branch, expected, row.id, create_branch)
                added = _version(row, model, version.entries)
            self._entry_cache.put({added.id: added.entries})  # committed: the next commit's chain starts here
            return added
        except IntegrityError as e:
            if version.idempotency_key and (first := self.by_idempotency_key(model, version.idempotency_key)):
                return self.version(model, first.id)  # a redelivered commit: the first one stands
            raise Conflict(f"commit to {model}@{branch} raced with another: {e.orig}") from None

    def _move(
        self, s: Session, model_id: int, branch: str, expected: int | None, new: int, create: bool
    ) -> None:
        if expected is None or create:
            existing = s.get(RefRow, (model_id, branch))
            if existing is not None and expected is None:
                raise Conflict(f"branch {branch!r} already exists; name the parent you computed against")
            if existing is None:
                s.add(RefRow(model_id=model_id, name=branch, kind="branch", version_id=new))
                s.flush()
                return
        moved = s.execute(
            update(RefRow)
            .where(RefRow.model_id == model_id, RefRow.name == branch, RefRow.kind == "branch")
            .where(RefRow.version_id == expected)
            .values(version_id=new)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            head = s.get(RefRow, (model_id, branch))
            where = f"is at {head.version_id}" if head else "does not exist"
            raise Conflict(f"branch {branch!r} moved: expected head {expected}, but it {where}")

    def version(self, model: str, version_id: int, with_entries: bool = True) -> Version:
        with self._tx() as s:
            row = s.get(VersionRow, version_id)
            m = self._model_row(s, model)
            if row is None or row.model_id != m.id:
                raise NotFound(f"model {model!r} has no version {version_id}")
            entries = self._entries(s, [version_id]).get(version_id, []) if with_entries else []
            return _version(row, model, entries)

    def versions(self, model: str) -> list[Version]:
        with self._tx() as s:
            m = self._model_row(s, model)
            rows = list(
                s.scalars(select(VersionRow).where(VersionRow.model_id == m.id).order_by(VersionRow.id))
            )
            entries = self._entries(s, [r.id for r in rows])
            return [_version(r, model, entries.get(r.id, [])) for r in rows]

    def by_idempotency_key(self, model: str, key: str) -> Version | None:
        with self._tx() as s:
            m = self._model_row(s, model)
            row = s.scalar(
                select(VersionRow).where(VersionRow.model_id == m.id, VersionRow.idempotency_key == key)
            )
            return _version(row, model, []) if row else None

    def chain(self, model: str, version_id: int) -> tuple[list[Version], str | None]:
        """Versions from `version_id` back along basis links, newest first, entries loaded.

        Stops at the newest version with a cached snapshot, whose object sha is returned.
        """
        with self._tx() as s:
            links = s.execute(_CHAIN, {"v": version_id}).all()  # one round trip, however long the chain
            if not links:
                raise NotFound(f"model {model!r} has no version {version_id}")
            ids, snapshot = [], None
            for vid, snap in links:
                if snap is not None:
                    snapshot = snap
                    break
                ids.append(vid)
            rows = {r.id: r for r in s.scalars(select(VersionRow).where(VersionRow.id.in_(ids or [-1])))}
            entries = self._entries(s, ids)
            return [_version(rows[i], model, entries.get(i, [])) for i in ids], snapshot

    def basis_chain(self, model: str, version_id: int, stop: int | None = None) -> list[Version]:
        """Versions from `version_id` back along basis links, newest first, entries loaded, through `stop`
        when it is on the chain, else to the root. Metadata only: what changed is read from the entries."""
        self.version(model, version_id, with_entries=False)  # NotFound for another model's id
        with self._tx() as s:
            ids = list(s.scalars(_BASIS, {"v": version_id, "stop": -1 if stop is None else stop}))
            rows = {r.id: r for r in s.scalars(select(VersionRow).where(VersionRow.id.in_(ids)))}
            entries = self._entries(s, ids)
            return [_version(rows[i], model, entries.get(i, [])) for i in ids]

    def _entries(self, s: Session, ids: list[int]) -> dict[int, list[Entry]]:
        out = self._entry_cache.get(ids)
        missing = [i for i in ids if i not in out]
        read: dict[int, list[Entry]] = {i: [] for i in missing}
        t = EntryRow
        columns = (t.version_id, t.name, t.kind, t.object, t.shape, t.dtype, t.nnz, t.nbytes)
        for i in range(0, len(missing), 500):  # plain rows, not ORM objects: a chain holds thousands
            for vid, name, kind, obj, shape, dtype, nnz, nbytes in s.execute(
                select(*columns).where(t.version_id.in_(missing[i : i + 500]))
            ):
                read[vid].append(Entry(name, kind, obj, tuple(shape), dtype, nnz, nbytes))
        self._entry_cache.put(read)
        return {**out, **read}

    # refs ---------------------------------------------------------------------
    def refs(self, model: str) -> list[Ref]:
        with self._tx() as s:
            m = self._model_row(s, model)
            rows = s.scalars(select(RefRow).where(RefRow.model_id == m.id).order_by(RefRow.kind, RefRow.name))
            return [Ref(r.name, r.kind, r.version_id) for r in rows]

    def ref(self, model: str, name: str) -> Ref | None:
        with self._tx() as s:
            m = self._model_row(s, model)
            r = s.get(RefRow, (m.id, name))
            return Ref(r.name, r.kind, r.version_id) if r else None

    def create_ref(self, model: str, name: str, kind: str, version_id: int) -> Ref:
        try:
            with self._tx() as s:
                m = self._model_row(s, model)
                s.add(RefRow(model_id=m.id, name=name, kind=kind, version_id=version_id))
                s.flush()
                return Ref(name, kind, version_id)
        except IntegrityError:
            raise AlreadyExists(f"{model!r} already has a branch or tag named {name!r}") from None

    def move_branch(self, model: str, branch: str, expected: int, new: int) -> None:
        with self._tx() as s:
            self._move(s, self._model_row(s, model).id, branch, expected, new, False)

    # objects ------------------------------------------------------------------
    def add_snapshot(self, version_id: int, sha: str, size: int) -> None:
        try:
            with self._tx() as s:
                s.merge(SnapshotRow(version_id=version_id, object=sha, size=size, used_at=now()))
        except IntegrityError:
            pass  # another process cached the same version first

    def touch_snapshot(self, sha: str) -> None:
        """Mark a snapshot used now (one small write next to a read of a whole model)."""
        with self._tx() as s:
            s.execute(update(SnapshotRow).where(SnapshotRow.object == sha).values(used_at=now()))

    def snapshots(self) -> list[Snapshot]:
        """Every cached snapshot, least recently used first."""
        with self._tx() as s:
            rows = s.scalars(select(SnapshotRow).order_by(SnapshotRow.used_at, SnapshotRow.version_id))
            epoch = datetime.fromtimestamp(0, UTC)
            return [Snapshot(r.version_id, r.object, r.size, utc(r.used_at or epoch)) for r in rows]

    def drop_snapshots(self, sha: str) -> None:
        with self._tx() as s:
            s.execute(delete(SnapshotRow).where(SnapshotRow.object == sha))

    def is_referenced(self, sha: str) -> bool:
        """Whether any version, snapshot or model file points at the object (indexed for entries)."""
        with self._tx() as s:
            if s.scalar(select(EntryRow.object).where(EntryRow.object == sha).limit(1)) is not None:
                return True
            if s.scalar(select(SnapshotRow.object).where(SnapshotRow.object == sha).limit(1)) is not None:
                return True
            return any(sha in files.values() for files in s.scalars(select(ModelRow.files)))

    def referenced_objects(self) -> set[str]:
        with self._tx() as s:
            refs = set(s.scalars(select(EntryRow.object).distinct()))
            refs |= set(s.scalars(select(SnapshotRow.object)))
            for files in s.scalars(select(ModelRow.files)):
                refs |= set(files.values())
            return refs


def _entry_rows(version_id: int, entries: list[Entry]) -> list[dict[str, Any]]:
    return [
        {
            "version_id": version_id,
            "name": e.name,
            "kind": e.kind,
            "object": e.object,
            "shape": list(e.shape),
            "dtype": e.dtype,
            "nnz": e.nnz,
            "nbytes": e.nbytes,
        }
        for e in entries
    ]


def _model(r: ModelRow) -> Model:
    return Model(r.id, r.name, utc(r.created_at), dict(r.config), dict(r.files), list(r.frozen))


def _version(r: VersionRow, model: str, entries: list[Entry]) -> Version:
    return Version(
        r.id,
        model,
        r.parent_id,
        r.basis_id,
        r.author,
        r.message,
        utc(r.created_at),
        dict(r.meta or {}),
        r.idempotency_key,
        sorted(entries, key=lambda e: e.name),
    )
