"""Parameter store use cases: one method per user operation, shared by every transport."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch

from llmk.domain import deltas
from llmk.domain.names import (
    any_match,
    check_file_name,
    check_name,
    check_tensor_name,
    matches,
)
from llmk.domain.task_spec import TASK_KEY, decode_task
from llmk.domain.versions import MAIN, CommitInfo, Entry, Model, Version, VersionEvent, part_key
from llmk.errors import AlreadyExists, Frozen, InvalidInput, NotFound
from services.store.interface import Change, Step, VersionStats
from services.store.usecases import disk_usage, exports, full_diff, materialize
from services.store.usecases.commit_checks import (
    Admitted,
    Bounds,
    changes_architecture,
    check_entries,
    dtype_name,
    frozen_changes,
    magnitude_metadata,
)
from services.store.usecases.history import History
from services.store.usecases.ports import Catalog, Events, FileState, Objects
from services.store.usecases.snapshots import SnapshotCache

log = logging.getLogger(__name__)


class Store(History):
    """The parameter store: History's metadata use cases plus everything that reads or writes tensors."""

    def __init__(
        self,
        catalog: Catalog,
        objects: Objects,
        events: Events,
        cache_chain_length: int = 8,
        gc_grace_seconds: float = 3600.0,
        snapshot_cache_bytes: int = 2 << 30,
    ):
        super().__init__(catalog)
        self.objects = objects
        self.events = events
        self.bounds = Bounds(objects)
        self.snapshots = SnapshotCache(
            catalog, objects, snapshot_cache_bytes, cache_chain_length, self.bounds
        )
        self.gc_grace_seconds = gc_grace_seconds

    @property
    def cache_chain_length(self) -> int:
        return self.snapshots.chain_length

    @cache_chain_length.setter
    def cache_chain_length(self, length: int) -> None:
        self.snapshots.chain_length = length

    # models ---------------------------------------------------------------------
    def create_model(
        self,
        name: str,
        tensors: Mapping[str, torch.Tensor],
        config: dict[str, Any],
        files: Mapping[str, bytes],
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        """A new model whose first version on `main` holds every tensor in full."""
        check_name(name, "model name")
        info.check()
        for fname in files:
            check_file_name(fname)
        if not tensors:
            raise InvalidInput(f"model {name!r} needs at least one tensor")
        for tensor_name, tensor in tensors.items():  # reject before the model row exists
            check_tensor_name(tensor_name)
            deltas.validate(tensor_name, deltas.full(tensor), None, None)
        blobs = {fname: self.objects.put_bytes(data)[0] for fname, data in files.items()}
        try:
            self.catalog.create_model(name, config, blobs)
        except AlreadyExists:
            if self.catalog.refs(name):
                self._discard(*blobs.values())
                raise
            # an import that died before its first version committed: take the name over
            self.catalog.update_model(name, config=config, files=blobs)
        return self.commit(name, {k: deltas.full(t) for k, t in tensors.items()}, MAIN, None, info)

    def file(self, model: str, name: str) -> bytes:
        m = self.catalog.model(model)
        if name not in m.files:
            raise NotFound(f"model {model!r} has no file {name!r}; it has {sorted(m.files)}")
        return self.objects.get_bytes(m.files[name])

    def freeze(self, model: str, patterns: list[str]) -> Model:
        """Make tensors read-only: no commit or rollback may change them until they are unfrozen."""
        m = self.catalog.model(model)
        p = materialize.plan(self.catalog, self.objects, model, self.resolve(model), lambda _: True)
        names = [*p.lineage, *p.snapshot_names]
        unmatched = [pat for pat in patterns if not any(matches(n, pat) for n in names)]
        if not patterns or "" in patterns:  # an empty selector matches every tensor
            raise InvalidInput("freeze needs a non-empty pattern (a tensor name, prefix or glob)")
        if unmatched:
            raise InvalidInput(f"freeze pattern(s) {unmatched} match no tensor of {model!r}@main")
        log.warning("model %r: frozen %s", model, patterns)
        return self.catalog.update_model(model, frozen=sorted(set(m.frozen) | set(patterns)))

    # commits ----------------------------------------------------------------------
    def commit(
        self,
        model: str,
        entries: Mapping[str, deltas.Delta],
        branch: str = MAIN,
        parent: int | None = None,
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        """Store typed entries as a child of `parent` and move `branch` to it if still at `parent`.

        With parent None the branch is created (first commit) or its current head is used.
        """
        info.check()
        if info.idempotency_key and (done := self.catalog.by_idempotency_key(model, info.idempotency_key)):
            return done
        for name in entries:
            check_tensor_name(name)
        m = self.catalog.model(model)
        head = self.catalog.ref(model, branch)
        if head is not None and head.kind != "branch":
            raise InvalidInput(f"{branch!r} is a tag of {model!r}; commits go to branches")
        expected = parent if parent is not None else (head.version if head else None)
        if head is None and (parent is not None or self.catalog.refs(model)):
            raise NotFound(f"model {model!r} has no branch {branch!r}; create it with `llmk store branch`")
        if parent is not None and head is not None and parent != head.version:
            self.catalog.version(model, parent, with_entries=False)  # unknown: NotFound; else a Conflict
        if not entries and TASK_KEY not in (info.metadata or {}):
            raise InvalidInput("a commit needs at least one tensor entry (or a task: `llmk task set`)")
        if TASK_KEY in (info.metadata or {}):
            decode_task((info.metadata or {})[TASK_KEY])  # a task that could not be served is refused
        frozen = sorted(n for n in entries if any_match(n, m.frozen))
        if frozen:
            raise Frozen(f"commit touches frozen tensor(s) of {model!r}: {', '.join(frozen[:10])}")
        reshape = changes_architecture(info.metadata)
        admitted = check_entries(self.catalog, self.objects, model, expected, entries, self.bounds, reshape)
        return self._write(model, branch, expected, entries, admitted, info)

    def commit_full(
        self,
        model: str,
        tensors: Mapping[str, torch.Tensor],
        branch: str = MAIN,
        parent: int | None = None,
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        """Commit complete new values; the store keeps the cheapest exact encoding of each change.

        Compared tensor by tensor with the parent's object files (usecases.full_diff), never materialized.
        """
        head = parent if parent is not None else self.resolve(model, branch)
        vid = self.resolve(model, str(head))  # NotFound for an unknown parent
        want = materialize.selector_filter("", list(tensors))
        reshape = changes_architecture(info.metadata)
        _, entries = self.snapshots.through(
            model, vid, want, lambda p: full_diff.entries(self.objects, p, tensors, reshape)
        )
        if not entries:
            raise InvalidInput(f"nothing changed against {model}@{head}")
        return self.commit(model, entries, branch, head, info)

    def _write(
        self,
        model: str,
        branch: str,
        expected: int | None,
        entries: Mapping[str, deltas.Delta],
        admitted: Admitted,
        info: CommitInfo,
    ) -> Version:
        pack = {part_key(n, k): t for n, d in entries.items() for k, t in d.parts.items()}
        header = magnitude_metadata(admitted.magnitudes)
        sha = self.objects.put_tensors(pack, header)[0] if pack else ""  # the file lands before its rows
        self.bounds.remember(sha, admitted.magnitudes)
        metas = admitted.metas
        rows = [
            Entry(n, d.kind.value, sha, metas[n][0], dtype_name(metas[n][1]), d.nnz, d.nbytes)
            for n, d in sorted(entries.items())
        ]
        version = self._version(model, expected, expected, info, "", dict(info.metadata or {}), rows)
        v = self._add_version(model, branch, expected, version, sha)
        self._announce(v, branch, [e.name for e in v.entries])
        return v

    def _add_version(
        self, model: str, branch: str, expected: int | None, version: Version, sha: str, create: bool = False
    ) -> Version:
        """Insert a version whose object file is written; a refused insert (a lost race, a redelivered
        commit answered by its first version) removes the file, unless something else references it."""
        try:
            v = self.catalog.add_version(model, branch, expected, version, create_branch=create)
        except Exception:
            self._discard(sha)
            raise
        if all(e.object != sha for e in v.entries):
            self._discard(sha)
        return v

    def _discard(self, *shas: str) -> None:
        for sha in filter(None, shas):
            try:
                self.objects.discard(sha, partial(self.catalog.is_referenced, sha))
            except Exception:  # the refusal is what the caller must see; gc collects the file later
                log.exception("could not remove object %s of a refused write", sha[:12])

    def _announce(self, v: Version, branch: str, changed: list[str] | None) -> None:
        """Tell workers: `changed` names the tensors that differ from the parent (None: any may)."""
        event = VersionEvent(v.model, branch, v.id, v.parent, None if changed is None else tuple(changed))
        try:
            self.events.publish(event)
        except Exception:  # the version is durable; workers also poll heads, so log and go on
            log.exception("could not publish version event %s", event)

    def rollback(
        self, model: str, to: str, branch: str = MAIN, author: str = "llmk", force_frozen: bool = False
    ) -> Version:
        """Point `branch` at the values of `to` through a new version; history keeps everything.

        Frozen tensors stay as they are: a rollback that would change one is refused unless forced.
        """
        if not to:
            raise InvalidInput("a rollback needs the version, tag or branch to restore")
        info = CommitInfo(author=author)
        info.check()
        target = self.resolve(model, to)
        head = self.head(model, branch)  # a tag never moves: NotFound names the branch
        frozen = self.catalog.model(model).frozen
        changed = frozen_changes(self.catalog, self.objects, model, head, target, frozen) if frozen else []
        if changed and not force_frozen:
            raise Frozen(
                f"rollback to {target} would change frozen tensor(s) of {model!r}: "
                f"{', '.join(changed[:10])}; unfreeze them or force it (--force-frozen)"
            )
        meta: dict[str, Any] = {"rollback_to": target}
        if changed:
            meta["forced_frozen"] = changed  # the audit trail of a forced rollback
        version = self._version(model, head, target, info, f"rollback to {target}", meta, [])
        v = self.catalog.add_version(model, branch, head, version)
        self._announce(v, branch, None)
        return v

    def squash(self, model: str, ref: str | None = None, author: str = "llmk") -> Version:
        """A new base version holding every tensor in full, bit-identical to `ref`'s values."""
        info = CommitInfo(author=author)
        info.check()
        vid = self.resolve(model, ref)
        tensors = self.fetch(model, str(vid))
        head_ref = self.catalog.ref(model, ref or MAIN)
        branch = head_ref.name if head_ref and head_ref.kind == "branch" else f"squash-{vid}"
        pack = {part_key(n, "tensor"): t for n, t in tensors.items()}
        magnitudes = {n: deltas.max_magnitude(deltas.full(t)) for n, t in tensors.items()}
        sha, _ = self.objects.put_tensors(pack, magnitude_metadata(magnitudes))
        self.bounds.remember(sha, magnitudes)
        rows = [
            Entry(
                n, "full", sha, tuple(t.shape), dtype_name(t.dtype), t.numel(), t.numel() * t.element_size()
            )
            for n, t in tensors.items()
        ]
        meta: dict[str, Any] = {"squashed": vid}
        version = self._version(model, vid, None, info, f"squash of {vid}", meta, rows)
        v = self._add_version(model, branch, vid, version, sha, create=branch != (ref or MAIN))
        self._announce(v, branch, [])  # same values, new id
        return v

    # reads -------------------------------------------------------------------------
    def fetch(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        vid = self.resolve(model, ref)
        p, tensors = self.snapshots.read(model, vid, materialize.selector_filter(selector, names))
        if not selector and names is None:
            self.snapshots.offer(vid, p.depth, tensors)
        return tensors

    def export(self, model: str, ref: str | None, out: Path, selector: str = "") -> int:
        exports.check_target(out)
        vid = self.resolve(model, ref)
        return exports.write(self.fetch(model, str(vid), selector), out, model, vid, selector)

    def diff(self, model: str, a: str, b: str) -> list[Change]:
        return materialize.changes(
            self.catalog, self.objects, model, self.resolve(model, a), self.resolve(model, b)
        )

    def locate(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> materialize.Located:
        """Which object files hold a version, for a reader that sees this object directory."""
        vid = self.resolve(model, ref)
        want = materialize.selector_filter(selector, names)
        return self.snapshots.locate(model, vid, want, whole=not selector and names is None)

    def steps(self, model: str, a: int, b: int) -> list[Step] | None:
        """The typed entries from version `a` to version `b`, oldest first, for a worker to apply in place;
        None when `a` is not on b's basis chain (a rollback or a squash lies between)."""
        return materialize.steps(self.catalog, self.objects, model, a, b)

    def locate_steps(self, model: str, a: int, b: int) -> tuple[list[Version] | None, dict[str, FileState]]:
        """steps() for a reader of the object files: the versions, and the state each file was checked in."""
        versions = materialize.step_versions(self.catalog, model, a, b)
        shas = {e.object for v in versions or [] for e in v.entries}
        return versions, materialize.checked(self.objects, shas)

    def stats(self, model: str) -> list[VersionStats]:
        return disk_usage.stats(self.catalog, self.objects, model)

    def scrub(self) -> list[str]:
        """Re-hash every object file; damaged ones are quarantined and named (reads of them then fail)."""
        return self.objects.scrub()

    def gc(self, dry_run: bool = False) -> list[str]:
        return disk_usage.gc(self.catalog, self.objects, self.gc_grace_seconds, dry_run)

    @staticmethod
    def _version(
        model: str,
        parent: int | None,
        basis: int | None,
        info: CommitInfo,
        message: str,
        metadata: dict[str, Any],
        entries: list[Entry],
    ) -> Version:
        """A version record to insert (the catalog gives it its id)."""
        return Version(
            0,
            model,
            parent,
            basis,
            info.author,
            info.message or message,
            datetime.now(UTC),
            metadata,
            info.idempotency_key,
            entries,
        )
