"""What a commit must pass before anything is written.

Each entry fits the tensor it changes; no entry changes a stored tensor's shape or dtype unless the commit
says it changes the architecture; and the value each changed tensor would take is finite, because finite
parts can still overflow (a low-rank 1e20 x 1e20, or +3e38 added twice).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch

from llmk.domain import deltas
from llmk.domain.names import any_match
from llmk.domain.versions import part_key
from llmk.errors import InvalidDelta
from services.store.usecases import materialize
from services.store.usecases.ports import Catalog, Objects

Meta = tuple[tuple[int, ...], torch.dtype]
CHANGES_ARCHITECTURE = "changes_architecture"  # commit metadata: shape or dtype changes are intended


def changes_architecture(metadata: Mapping[str, Any] | None) -> bool:
    return bool((metadata or {}).get(CHANGES_ARCHITECTURE))


@dataclasses.dataclass(frozen=True)
class Admitted:
    metas: dict[str, Meta]  # each tensor's shape and dtype after the commit
    magnitudes: dict[str, float]  # each entry's deltas.max_magnitude, worked out once (check and Bounds)


def check_entries(
    catalog: Catalog,
    objects: Objects,
    model: str,
    basis: int | None,
    entries: Mapping[str, deltas.Delta],
    bounds: Bounds,
    reshape: bool = False,
) -> Admitted:
    """Refuse the commit (InvalidDelta) unless every entry is acceptable."""
    want = materialize.selector_filter("", list(entries))
    p = None if basis is None else materialize.plan(catalog, objects, model, basis, want)
    stored = _stored_meta(objects, p) if p else {}
    metas: dict[str, Meta] = {}
    for name, d in entries.items():
        old = stored.get(name)
        if d.kind is not deltas.Kind.FULL and old is None:
            raise InvalidDelta(f"{name}: unknown tensor in {model!r}; a delta needs an existing tensor")
        deltas.validate(name, d, *(old or (None, None)))
        new = _meta(d) if d.kind is deltas.Kind.FULL or old is None else old
        if old is not None and new != old and not reshape:
            raise InvalidDelta(
                f"{name}: a full value of {new[0]} {dtype_name(new[1])} would replace the stored "
                f"{old[0]} {dtype_name(old[1])}; a commit that changes the architecture says so in its "
                f"metadata ({CHANGES_ARCHITECTURE!r}: true)"
            )
        metas[name] = new
    magnitudes = {name: deltas.max_magnitude(d) for name, d in entries.items()}
    if p:
        additive = {n: d for n, d in entries.items() if d.kind not in deltas.REPLACING}
        _check_results(objects, bounds, p, additive, metas, magnitudes)
    return Admitted(metas, magnitudes)


def frozen_changes(
    catalog: Catalog, objects: Objects, model: str, a: int, b: int, patterns: list[str]
) -> list[str]:
    """Frozen tensors whose value differs between versions `a` and `b` (added and removed ones too)."""

    def frozen(name: str) -> bool:
        return any_match(name, patterns)

    va = materialize.load(objects, materialize.plan(catalog, objects, model, a, frozen))
    vb = materialize.load(objects, materialize.plan(catalog, objects, model, b, frozen))
    return sorted(n for n in va.keys() | vb.keys() if n not in va or n not in vb or not _same(va[n], vb[n]))


def _same(x: torch.Tensor, y: torch.Tensor) -> bool:
    bits = torch.uint8
    return (
        x.shape == y.shape
        and x.dtype == y.dtype
        and torch.equal(x.reshape(-1).view(bits), y.reshape(-1).view(bits))
    )


def _stored_meta(objects: Objects, p: materialize.Plan) -> dict[str, Meta]:
    metas = {n: (es[0].shape, stored_dtype(es[0].dtype)) for n, es in p.lineage.items()}
    if p.snapshot:
        with objects.open_tensors(p.snapshot) as f:
            for n in p.snapshot_names:
                if n not in metas:
                    sl = f.get_slice(n)
                    metas[n] = (tuple(sl.get_shape()), stored_dtype(sl.get_dtype()))
    return metas


MAGNITUDES = "llmk.reaches"  # object metadata (its stored name): JSON {tensor name: its entry's magnitude}


def magnitude_metadata(magnitudes: Mapping[str, float]) -> dict[str, str]:
    """What a writer stores beside the entries, so a process that did not write them (a restarted store)
    bounds them from the header instead of reading every value."""
    return {MAGNITUDES: json.dumps(dict(magnitudes))}


def stored_magnitudes(metadata: Mapping[str, str] | None) -> dict[str, float]:
    """The magnitudes an object's writer stored; empty for objects written before they were stored (or with
    anything unreadable there): those are read and their magnitude worked out again."""
    try:
        found = json.loads((metadata or {}).get(MAGNITUDES, "{}"))
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {n: float(r) for n, r in found.items() if isinstance(r, int | float) and not isinstance(r, bool)}


class Bounds:
    """Upper bounds on |value| of stored tensors, so a commit can prove its result finite without reading it.

    A bound is the stored value's magnitude (see deltas.max_magnitude) carried through its entries. Each
    entry's magnitude is worked out once per process, when this process writes it or first reads it back:
    objects are content-addressed, so a remembered magnitude never goes stale.
    """

    def __init__(self, objects: Objects, size: int = 1 << 17):
        self.objects = objects
        self.size = size
        self._magnitude: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, sha: str, magnitudes: Mapping[str, float]) -> None:
        """The magnitude of each entry written to object `sha`."""
        for name, magnitude in magnitudes.items():
            self._keep((sha, name), magnitude)

    def of(self, p: materialize.Plan, name: str) -> float:
        """A bound on |value| of tensor `name` in the planned version."""
        lineage = p.lineage.get(name, [])
        bound = 0.0
        if p.snapshot and name in p.snapshot_names and not (lineage and lineage[-1].kind == deltas.Kind.FULL):
            bound = self._entry(p.snapshot, name, deltas.Kind.FULL, stored_as=name)
        for e in reversed(lineage):  # oldest first
            kind = deltas.Kind(e.kind)
            bound = deltas.bound_after(bound, kind, self._entry(e.object, e.name, kind))
        return bound

    def _entry(self, sha: str, name: str, kind: deltas.Kind, stored_as: str = "") -> float:
        """The magnitude of entry `name` in object `sha` (a snapshot stores each tensor under its name)."""
        with self._lock:
            if (known := self._magnitude.get((sha, name))) is not None:
                self._magnitude.move_to_end((sha, name))
                return known
        keys = {"tensor": stored_as} if stored_as else {k: part_key(name, k) for k in deltas.PARTS[kind]}
        with self.objects.open_tensors(sha) as f:
            written = stored_magnitudes(f.metadata())
            for other, magnitude in written.items():
                self._keep((sha, other), magnitude)
            if name in written:
                return written[name]
            parts = {k: f.get_tensor(key) for k, key in keys.items()}
        return self._keep((sha, name), deltas.max_magnitude(deltas.Delta(kind, parts)))

    def _keep(self, key: tuple[str, str], magnitude: float) -> float:
        with self._lock:
            self._magnitude[key] = magnitude
            while len(self._magnitude) > self.size:
                self._magnitude.popitem(last=False)
        return magnitude


def _check_results(
    objects: Objects,
    bounds: Bounds,
    p: materialize.Plan,
    changes: Mapping[str, deltas.Delta],
    metas: Mapping[str, Meta],
    magnitudes: Mapping[str, float],
) -> None:
    """Refuse an additive delta whose result is not finite: proven finite by bounds where they are far
    from overflow (every commit of ordinary weights), else by applying it to the stored value."""
    for name, d in changes.items():
        dtype = metas[name][1]
        if not dtype.is_floating_point:
            continue
        if deltas.bound_after(bounds.of(p, name), d.kind, magnitudes[name]) < torch.finfo(dtype).max / 2:
            continue
        one = dataclasses.replace(
            p,
            lineage={name: p.lineage[name]} if name in p.lineage else {},
            snapshot_names=[n for n in p.snapshot_names if n == name],
        )
        value = deltas.apply(materialize.load(objects, one)[name], d)
        if not bool(torch.isfinite(value).all()):
            raise InvalidDelta(f"{name}: applying this {d.kind} delta gives NaN or Inf (overflow)")


def _meta(d: deltas.Delta) -> Meta:
    t = d.parts["tensor"]
    return tuple(t.shape), t.dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def stored_dtype(name: str) -> torch.dtype:
    """The dtype an entry row ("float32") or a safetensors header ("F32") names."""
    aliases = {
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "F64": "float64",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U8": "uint8",
        "BOOL": "bool",
    }
    return getattr(torch, aliases.get(name, name))
