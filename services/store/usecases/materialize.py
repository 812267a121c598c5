"""Turning a version's delta chain into tensors: materialize, diff and storage stats."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from llmk.domain import deltas
from llmk.domain.names import matches
from llmk.domain.versions import Entry, Version, part_key
from llmk.errors import Corrupt
from services.store.interface import Change, Step
from services.store.usecases.ports import Catalog, FileState, Objects

log = logging.getLogger(__name__)

Lineage = dict[str, list[Entry]]  # tensor name -> entries newest first, ending at a full one


@dataclass(frozen=True)
class Plan:
    """What to read for one version: per tensor its entries, and the snapshot beneath them."""

    lineage: Lineage
    snapshot: str | None
    snapshot_names: list[str]
    depth: int  # versions walked; long walks are worth caching


@dataclass(frozen=True)
class Located:
    """A version's plan and the file state in which the store checked each object it names: what a reader
    that sees the same object directory needs to read the version itself, without the bytes crossing gRPC."""

    version: int
    plan: Plan
    checked: dict[str, FileState]  # sha -> the state the store checked the file in


def plan(
    catalog: Catalog, objects: Objects, model: str, version_id: int, want: Callable[[str], bool]
) -> Plan:
    chain, snapshot = catalog.chain(model, version_id)
    lineage: Lineage = {}
    done: set[str] = set()
    for v in chain:
        for e in v.entries:
            if e.name in done or not want(e.name):
                continue
            lineage.setdefault(e.name, []).append(e)
            if e.kind == deltas.Kind.FULL:
                done.add(e.name)
    snapshot_names: list[str] = []
    if snapshot:
        try:
            with objects.open_tensors(snapshot) as f:
                snapshot_names = [k for k in f.keys() if want(k)]
        except Corrupt as e:  # a cache, never the truth: drop it and plan from the deltas beneath it
            log.warning("snapshot %s of %s@%s dropped: %s", snapshot[:12], model, version_id, e)
            catalog.drop_snapshots(snapshot)
            objects.remove(snapshot, partial(catalog.is_referenced, snapshot))
            return plan(catalog, objects, model, version_id, want)
    missing = [n for n in lineage if n not in done and n not in snapshot_names]
    if missing:
        raise Corrupt(f"{model}@{version_id}: no full value beneath the deltas of {missing[:3]}")
    return Plan(lineage, snapshot, snapshot_names, len(chain))


def locate(
    catalog: Catalog, objects: Objects, model: str, version_id: int, want: Callable[[str], bool]
) -> Located:
    p = plan(catalog, objects, model, version_id, want)
    shas = {e.object for entries in p.lineage.values() for e in entries}
    if p.snapshot:
        shas.add(p.snapshot)
    return Located(version_id, p, checked(objects, shas))


def load(objects: Objects, p: Plan) -> dict[str, torch.Tensor]:
    """Read base values and apply each tensor's deltas oldest first."""
    handles: dict[str, Any] = {}

    def part(e: Entry, name: str) -> torch.Tensor:
        if e.object not in handles:
            handles[e.object] = objects.open_tensors(e.object).__enter__()
        return handles[e.object].get_tensor(part_key(e.name, name))

    wanted: dict[str, list[str]] = {}  # object -> its tensors this load reads
    for entries in p.lineage.values():
        for e in entries:
            keys = wanted.setdefault(e.object, [])
            keys += [part_key(e.name, k) for k in deltas.PARTS[deltas.Kind(e.kind)]]
    for sha, keys in wanted.items():
        handles[sha] = objects.open_tensors(sha).__enter__()
        handles[sha].prefetch(keys)

    out: dict[str, torch.Tensor] = {}
    if p.snapshot:
        with objects.open_tensors(p.snapshot) as f:
            f.prefetch(p.snapshot_names)
            out = {k: f.get_tensor(k) for k in p.snapshot_names}
    for name, entries in p.lineage.items():
        value = out.get(name)
        for e in reversed(entries):
            parts = {k: part(e, k) for k in deltas.PARTS[deltas.Kind(e.kind)]}
            value = deltas.apply(value, deltas.Delta(deltas.Kind(e.kind), parts))
        assert value is not None
        out[name] = value
    for h in handles.values():
        h.__exit__(None, None, None)
    return dict(sorted(out.items()))


def steps(catalog: Catalog, objects: Objects, model: str, a: int, b: int) -> list[Step] | None:
    """The versions after `a` up to `b`, oldest first, with their entries read from the object files;
    None when `a` is not on b's basis chain (a rollback or a squash lies between: read values instead)."""
    versions = step_versions(catalog, model, a, b)
    return None if versions is None else read_steps(objects, versions)


def step_versions(catalog: Catalog, model: str, a: int, b: int) -> list[Version] | None:
    """The versions after `a` up to `b`, oldest first, entries listed but not read; None off the chain."""
    catalog.version(model, a, with_entries=False)  # NotFound for an unknown id
    chain = catalog.basis_chain(model, b, stop=a)
    return list(reversed(chain[:-1])) if chain[-1].id == a else None


def read_steps(objects: Objects, versions: list[Version]) -> list[Step]:
    out = []
    for v in versions:
        entries: dict[str, deltas.Delta] = {}
        by_object: dict[str, list[Entry]] = {}
        for e in v.entries:
            by_object.setdefault(e.object, []).append(e)
        for sha, group in by_object.items():
            with objects.open_tensors(sha) as f:
                for e in group:
                    kind = deltas.Kind(e.kind)
                    parts = {k: f.get_tensor(part_key(e.name, k)) for k in deltas.PARTS[kind]}
                    entries[e.name] = deltas.Delta(kind, parts)
        out.append(Step(v.id, entries))
    return out


def checked(objects: Objects, shas: set[str]) -> dict[str, FileState]:
    """The file state each object was checked in (checking it now if needed), for a reader of the files."""
    return {sha: objects.verified_state(sha) for sha in sorted(shas)}


def selector_filter(selector: str, names: list[str] | None = None) -> Callable[[str], bool]:
    if names is not None:
        wanted = set(names)
        return lambda n: n in wanted and matches(n, selector)
    return lambda n: matches(n, selector)


def changes(catalog: Catalog, objects: Objects, model: str, a: int, b: int) -> list[Change]:
    la = plan(catalog, objects, model, a, lambda _: True)
    lb = plan(catalog, objects, model, b, lambda _: True)
    if la.snapshot or lb.snapshot:  # lineages are cut at snapshots: compare values instead
        suspects = sorted(set(la.lineage) | set(lb.lineage) | set(la.snapshot_names) | set(lb.snapshot_names))
    else:
        suspects = sorted(
            n for n in set(la.lineage) | set(lb.lineage) if la.lineage.get(n) != lb.lineage.get(n)
        )
    want = selector_filter("", suspects)
    va = load(objects, plan(catalog, objects, model, a, want))
    vb = load(objects, plan(catalog, objects, model, b, want))
    out = []
    for name in suspects:
        old, new = va.get(name), vb.get(name)
        if new is None or old is None or old.shape != new.shape or old.dtype != new.dtype:
            ref = new if new is not None else old
            assert ref is not None
            out.append(
                Change(
                    name,
                    "added" if old is None else "removed" if new is None else "replaced",
                    ref.numel(),
                    float(ref.float().norm()),
                    tuple(ref.shape),
                )
            )
            continue
        nnz = int(deltas.changed_mask(old, new).sum())
        if nnz:
            kind = _kind_between(la.lineage.get(name, []), lb.lineage.get(name, []))
            out.append(Change(name, kind, nnz, float((new.double() - old.double()).norm()), tuple(new.shape)))
    return out


def _kind_between(old: list[Entry], new: list[Entry]) -> str:
    extra = len(new) - len(old)
    return new[0].kind if extra == 1 and new[1:] == old else "mixed"


def state_bytes(versions: list[Version]) -> dict[int, int]:
    """Bytes a full copy of each version would take, from entry shapes alone."""
    by_id = {v.id: v for v in versions}
    sizes: dict[int, dict[str, int]] = {}
    for v in versions:  # ids ascend, so a basis is always seen before its children
        base = dict(sizes.get(v.basis, {})) if v.basis is not None and v.basis in by_id else {}
        for e in v.entries:
            base[e.name] = math.prod(e.shape) * _itemsize(e.dtype)
        sizes[v.id] = base
    return {vid: sum(s.values()) for vid, s in sizes.items()}


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype.removeprefix("torch."))).element_size()
