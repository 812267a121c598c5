"""A stateful test of the store against a plain in-memory model of its versions, branches and freeze
patterns, over every client and backend (see conftest.py).

Hypothesis runs random sequences of commits, rollbacks, squashes, branches, freezes, reads, gc and injected
faults (object files damaged in place, a full disk: the object writer fails with ENOSPC) and checks that
every read, and every version at the end, returns exactly the values the model predicts, and that each
failure is the one llmk error the situation calls for. Small integers keep every sum exact, so any
difference is a wrong value, not rounding.
`make test` runs a few sequences; `make fuzz` many (LLMK_STATEFUL_EXAMPLES).
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from safetensors.torch import save_file

from llmk import errors
from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from services.store.adapters import objects as object_files
from services.store.interface import StoreClient
from services.store.main import build
from services.store.usecases.store import Store
from tests.contract.store.contract_support import same_bits

SHAPES = {
    "model.embed_tokens.weight": (6, 4),
    "model.layers.0.mlp.up_proj.weight": (4, 4),
    "model.layers.0.self_attn.q_proj.weight": (4, 4),
    "model.layers.1.mlp.up_proj.weight": (4, 4),
    "model.norm.weight": (4,),
}
NAMES = sorted(SHAPES)
PATTERNS = ["model.layers.0.mlp", "*.q_proj.*", "model.norm", "model.layers.1", "model.layers.7"]
BRANCHES = ["main", "exp", "b-2"]
KINDS = [Kind.DENSE, Kind.SPARSE, Kind.SPARSE_SET, Kind.ROWS]
SMALL = st.integers(-3, 3).map(float)  # every sum of a few of these is exact in float32
STATEFUL = settings(
    max_examples=int(os.environ.get("LLMK_STATEFUL_EXAMPLES", "8")),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

Values = dict[str, torch.Tensor]


def frozen_by(name: str, patterns: set[str]) -> bool:
    """The store's documented rule, restated: a glob, or a dotted prefix (`layers.1` is not `layers.10`)."""
    return any(fnmatchcase(name, p) if "*" in p else name == p or name.startswith(p + ".") for p in patterns)


def draw_change(data: st.DataObject, name: str, old: torch.Tensor) -> tuple[Delta, torch.Tensor]:
    """A small delta of a kind that fits the tensor, and the value it must produce (computed by hand)."""
    shape, numel = tuple(old.shape), old.numel()
    kind = data.draw(st.sampled_from(KINDS if len(shape) == 2 else KINDS[:3]))
    new = old.clone()
    flat = new.view(-1)
    if kind is Kind.DENSE:
        diff = torch.tensor(data.draw(st.lists(SMALL, min_size=numel, max_size=numel))).view(shape)
        return Delta(kind, {"diff": diff}), old + diff
    if kind is Kind.ROWS:
        ids = data.draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=2))
        values = torch.tensor(data.draw(st.lists(SMALL, min_size=len(ids) * 4, max_size=len(ids) * 4)))
        values = values.view(len(ids), shape[1])
        for i, row in enumerate(ids):  # a row named twice adds twice
            new[row] += values[i]
        return Delta(kind, {"rows": torch.tensor(ids), "values": values}), new
    unique = kind is Kind.SPARSE_SET  # a replacement may not name a position twice; an addition may
    ids = data.draw(st.lists(st.integers(0, numel - 1), min_size=1, max_size=4, unique=unique))
    values = data.draw(st.lists(SMALL, min_size=len(ids), max_size=len(ids)))
    for i, v in zip(ids, values, strict=True):
        flat[i] = v if unique else flat[i] + v
    return Delta(kind, {"indices": torch.tensor(ids), "values": torch.tensor(values)}), new


def flip_byte(path: Path, back: int) -> None:
    """A bit flipped in place, size and mtime kept: only the checksum can tell."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(max(st.st_size - back, 0))
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


class DiskFull:
    """Object writes fail as on a full disk while `on`: part of the file lands, then ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        monkeypatch.setattr(object_files, "save_file", self._save)

    def _save(self, tensors: Values, filename: str, metadata: dict[str, str] | None = None) -> None:
        if self.on:
            Path(filename).write_bytes(b"\0" * 64)
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        save_file(tensors, filename, metadata)


@dataclass
class Run:
    """One run's store: a client over the transport under test, and a second store on the same database and
    object folder (what an operator's tools see, for what the client API does not offer)."""

    client: StoreClient
    inspect: Store
    objects: Path
    close: Callable[[], None]


def open_run(settings: Settings, transport: str) -> Run:
    """A store of its own (its own object folder; on SQLite its own database) so that runs never meet."""
    served, inspect = Deployment(settings).local_store(), Deployment(settings).local_store()
    if transport == "local":
        client: StoreClient = served
        stop: Callable[[], object] = lambda: None  # noqa: E731
    else:
        server, port = build(Deployment(settings), store=served)
        server.start()
        beside = settings.objects_path if transport == "files" else None
        client = Deployment(
            settings.model_copy(update={"store_address": f"127.0.0.1:{port}", "store_object_dir": beside})
        ).store()
        stop = lambda: (client.close(), server.stop(0).wait())  # noqa: E731

    def close() -> None:
        stop()
        served.catalog.engine.dispose()
        inspect.catalog.engine.dispose()

    return Run(client, inspect, settings.objects_path, close)


class StoreMachine(RuleBasedStateMachine):
    """One model in a fresh store per run; the model in `values` is the oracle."""

    open_run: Callable[[int], Run]
    disk: DiskFull
    runs = 0

    def __init__(self) -> None:
        super().__init__()
        StoreMachine.runs += 1
        self.model = f"m{StoreMachine.runs}"  # unique: on PostgreSQL the runs share one database
        self.env = type(self).open_run(StoreMachine.runs)
        self.values: dict[int, Values] = {}  # version id -> every tensor's value
        self.heads: dict[str, int] = {}
        self.frozen: set[str] = set()
        self.damaged: dict[str, bytes] = {}  # sha of an object we damaged -> its true bytes

    @property
    def client(self) -> Any:
        return self.env.client

    @initialize()
    def create(self) -> None:
        g = torch.Generator().manual_seed(0)  # every run alike: a replayed run must behave as it did
        base = {n: torch.randint(-4, 5, s, generator=g).float() for n, s in SHAPES.items()}
        v = self.client.create_model(self.model, base, {"hidden_size": 4}, {}, CommitInfo(message="base"))
        self.values[v.id], self.heads["main"] = base, v.id

    # what the model predicts ----------------------------------------------------------------------
    def path(self, sha: str) -> Path:
        return self.env.objects / sha[:2] / sha[2:]

    def intact(self, sha: str) -> bool:
        p = self.path(sha)
        return p.exists() and hashlib.sha256(p.read_bytes()).hexdigest() == sha

    def hurt(self) -> bool:
        """Whether a damaged object holds deltas of this model: reads may then fail, as Corrupt."""
        entries = {e.object for v in self.env.inspect.catalog.versions(self.model) for e in v.entries}
        return any(not self.intact(sha) for sha in self.damaged.keys() & entries)

    def attempt(self, call: Callable[[], Any], allowed: set[type], must_fail: bool = False) -> Any:
        """The call's result, or None after an error of exactly one of the `allowed` classes."""
        try:
            result = call()
        except errors.LlmkError as e:
            if type(e) not in allowed:
                raise AssertionError(f"{type(e).__name__}: {e} (allowed: {allowed})") from e
            return None
        assert not must_fail, f"succeeded where {allowed} was due"
        return result

    def committed(self, branch: str, v: Any, values: Values) -> None:
        assert v.parent == self.heads[branch]
        assert v.id not in self.values
        self.values[v.id], self.heads[branch] = values, v.id

    # rules ----------------------------------------------------------------------------------------
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        branch, name = data.draw(st.sampled_from(sorted(self.heads))), data.draw(st.sampled_from(NAMES))
        head = self.heads[branch]
        delta, new = draw_change(data, name, self.values[head][name])
        if frozen_by(name, self.frozen):  # refused before anything is read or written
            allowed, must_fail = {errors.Frozen}, True
        else:
            allowed = {errors.Corrupt} if self.hurt() else set()
            allowed |= {errors.NoSpace} if self.disk.on else set()
            must_fail = self.disk.on
        v = self.attempt(
            lambda: self.client.commit(self.model, {name: delta}, branch, head), allowed, must_fail
        )
        if v is not None:
            self.committed(branch, v, {**self.values[head], name: new})

    @precondition(lambda self: len(self.values) > 1)
    @rule(data=st.data())
    def commit_on_a_stale_head(self, data: st.DataObject) -> None:
        branch = data.draw(st.sampled_from(sorted(self.heads)))
        stale = data.draw(st.sampled_from(sorted(set(self.values) - {self.heads[branch]})))
        name = data.draw(st.sampled_from([n for n in NAMES if not frozen_by(n, self.frozen)] or NAMES))
        delta, _ = draw_change(data, name, self.values[stale][name])
        allowed = {errors.Frozen} if frozen_by(name, self.frozen) else {errors.Conflict}
        allowed |= ({errors.Corrupt} if self.hurt() else set()) | (
            {errors.NoSpace} if self.disk.on else set()
        )
        self.attempt(lambda: self.client.commit(self.model, {name: delta}, branch, stale), allowed, True)

    @rule(data=st.data())
    def commit_full(self, data: st.DataObject) -> None:
        branch, name = data.draw(st.sampled_from(sorted(self.heads))), data.draw(st.sampled_from(NAMES))
        head = self.heads[branch]
        new = self.values[head][name].clone()
        new.view(-1)[data.draw(st.integers(0, new.numel() - 1))] += data.draw(st.sampled_from([-2.0, 1.0]))
        frozen = frozen_by(name, self.frozen)
        allowed = ({errors.Frozen} if frozen else set()) | ({errors.Corrupt} if self.hurt() else set())
        allowed |= {errors.NoSpace} if self.disk.on and not frozen else set()
        call = lambda: self.client.commit_full(self.model, {name: new}, branch, head)  # noqa: E731
        v = self.attempt(call, allowed, frozen or self.disk.on)
        if v is not None:
            self.committed(branch, v, {**self.values[head], name: new})

    @rule(data=st.data(), force=st.booleans())
    def rollback(self, data: st.DataObject, force: bool) -> None:
        branch = data.draw(st.sampled_from(sorted(self.heads)))
        target = data.draw(st.sampled_from(sorted(self.values)))
        now, then = self.values[self.heads[branch]], self.values[target]
        changed = [n for n in NAMES if frozen_by(n, self.frozen) and not same_bits(now[n], then[n])]
        refused = bool(changed) and not force
        allowed = ({errors.Frozen} if refused else set()) | (
            {errors.Corrupt} if self.frozen and self.hurt() else set()  # only frozen tensors are read
        )
        call = lambda: self.client.rollback(self.model, str(target), branch, force_frozen=force)  # noqa: E731
        v = self.attempt(call, allowed, refused)
        if v is not None:
            assert v.metadata.get("forced_frozen", []) == changed
            assert v.basis == target
            self.committed(branch, v, then)

    @rule(data=st.data())
    def squash(self, data: st.DataObject) -> None:
        branch = data.draw(st.sampled_from(sorted(self.heads)))
        allowed = ({errors.Corrupt} if self.hurt() else set()) | ({errors.NoSpace} if self.disk.on else set())
        v = self.attempt(lambda: self.client.squash(self.model, branch), allowed, self.disk.on)
        if v is not None:
            assert v.basis is None
            assert {e.kind for e in v.entries} == {"full"}
            self.committed(branch, v, self.values[self.heads[branch]])

    @rule(name=st.sampled_from(BRANCHES[1:]), data=st.data())
    def branch(self, name: str, data: st.DataObject) -> None:
        start = data.draw(st.sampled_from(sorted(self.values)))
        exists = name in self.heads
        ref = self.attempt(
            lambda: self.client.branch(self.model, name, str(start)), {errors.AlreadyExists}, exists
        )
        if ref is not None:
            assert (ref.kind, ref.version) == ("branch", start)
            self.heads[name] = start

    @rule(patterns=st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=2, unique=True))
    def freeze(self, patterns: list[str]) -> None:
        unmatched = any(not any(frozen_by(n, {p}) for n in NAMES) for p in patterns)
        allowed = ({errors.InvalidInput} if unmatched else set()) | (
            {errors.Corrupt} if self.hurt() else set()
        )
        m = self.attempt(lambda: self.client.freeze(self.model, patterns), allowed, unmatched)
        if m is not None:
            self.frozen |= set(patterns)
            assert m.frozen == sorted(self.frozen)

    @rule(pattern=st.sampled_from(PATTERNS))
    def unfreeze(self, pattern: str) -> None:
        known = pattern in self.frozen
        m = self.attempt(
            lambda: self.client.unfreeze(self.model, [pattern]), {errors.InvalidInput}, not known
        )
        if m is not None:
            self.frozen.discard(pattern)
            assert m.frozen == sorted(self.frozen)

    @rule()
    def gc(self) -> None:
        removed = set(self.client.gc())
        kept = {e.object for v in self.env.inspect.catalog.versions(self.model) for e in v.entries}
        assert not removed & kept, "gc removed an object a version needs"

    @rule(snapshot=st.booleans(), pick=st.integers(0, 63), back=st.integers(1, 64))
    def damage_an_object(self, snapshot: bool, pick: int, back: int) -> None:
        """Flip a byte of one of the model's delta files or cached snapshots, `back` bytes before its end (in
        the values, or in the header of a small file), keeping its mtime as `touch -r` does. The pick is an
        index, so that what hypothesis draws does not depend on the files there."""
        catalog = self.env.inspect.catalog
        if snapshot:
            files = {s.object for s in catalog.snapshots()}
        else:
            files = {e.object for v in catalog.versions(self.model) for e in v.entries}
        candidates = sorted(sha for sha in files - self.damaged.keys() if self.path(sha).exists())
        if candidates:
            sha = candidates[pick % len(candidates)]
            self.damaged[sha] = self.path(sha).read_bytes()
            flip_byte(self.path(sha), back)

    @rule()
    def scrub(self) -> None:
        expected = {sha for sha in self.damaged if self.path(sha).exists() and not self.intact(sha)}
        assert set(self.env.inspect.scrub()) == expected
        assert all((self.env.objects / "quarantine" / sha).exists() for sha in expected)

    @precondition(lambda self: self.damaged)
    @rule()
    def repair(self) -> None:
        """Put the true bytes back, as an operator restoring from a backup would."""
        for sha, data in self.damaged.items():
            if not self.intact(sha):
                self.path(sha).parent.mkdir(exist_ok=True)
                self.path(sha).write_bytes(data)
        self.damaged.clear()

    @rule(on=st.booleans())
    def disk_fills(self, on: bool) -> None:
        self.disk.on = on

    @rule(data=st.data())
    def fetch(self, data: st.DataObject) -> None:
        vid = data.draw(st.sampled_from(sorted(self.values)))
        how = data.draw(st.sampled_from(["all", "names", "selector"]))
        names = (
            data.draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True)) if how == "names" else None
        )
        selector = data.draw(st.sampled_from(PATTERNS)) if how == "selector" else ""
        want = [n for n in names or NAMES if frozen_by(n, {selector} if selector else {"*"})]
        self.read(vid, {n: self.values[vid][n] for n in want}, selector, names)

    # invariants -----------------------------------------------------------------------------------
    @invariant()
    def branch_heads_are_the_model_heads(self) -> None:
        """Refs only: reading values here would drop a damaged snapshot before the next step could meet it."""
        if self.heads:  # not before `create`
            refs = {r.name: r.version for r in self.client.refs(self.model) if r.kind == "branch"}
            assert refs == self.heads

    def read(self, vid: int, expected: Values, selector: str = "", names: list[str] | None = None) -> None:
        """Exactly the predicted values, whether or not the disk is full; Corrupt only when damage is read."""
        allowed = {errors.Corrupt} if self.hurt() else set()
        got = self.attempt(lambda: self.client.fetch(self.model, str(vid), selector, names), allowed)
        if got is not None:
            assert sorted(got) == sorted(expected), f"{self.model}@{vid}: {sorted(got)}"
            wrong = [n for n in expected if not same_bits(got[n], expected[n])]
            assert not wrong, f"{self.model}@{vid}: wrong values of {wrong}"

    def teardown(self) -> None:
        """Undo the faults and read every version once more."""
        self.disk.on = False
        try:
            if self.damaged:
                self.repair()
            for vid, expected in self.values.items():
                self.read(vid, expected)
        finally:
            self.env.close()


def test_the_store_never_serves_a_wrong_value(
    transport: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(n: int) -> Run:
        tight = {"cache_chain_length": 1, "snapshot_cache_bytes": 4000, "gc_grace_seconds": 0}
        return open_run(settings.model_copy(update={"home": tmp_path / f"run{n}", **tight}), transport)

    machine = type("Machine", (StoreMachine,), {"open_run": staticmethod(run), "disk": DiskFull(monkeypatch)})
    run_state_machine_as_test(machine, settings=STATEFUL)
