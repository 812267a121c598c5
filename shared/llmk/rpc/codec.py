"""Store records to protobuf messages and back; nothing else crosses the wire."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime

from llmk.app.reading import Change, Step
from llmk.app.upkeep import VersionStats
from llmk.domain import deltas
from llmk.domain.versions import Entry, Model, Ref, Version, part_key
from llmk.errors import InvalidInput
from llmk.rpc.tensors import chunks_in, from_chunks, packed, to_chunks
from llmk.v1 import store_pb2 as pb


def version_to_pb(v: Version) -> pb.VersionInfo:
    return pb.VersionInfo(
        id=v.id,
        model=v.model,
        parent=v.parent,
        basis=v.basis,
        author=v.author,
        message=v.message,
        created_at=v.created_at.isoformat(),
        metadata_json=json.dumps(v.metadata),
        idempotency_key=v.idempotency_key or "",
        entries=[
            pb.EntryInfo(
                name=e.name,
                kind=e.kind,
                object=e.object,
                shape=list(e.shape),
                dtype=e.dtype,
                nnz=e.nnz,
                nbytes=e.nbytes,
            )
            for e in v.entries
        ],
    )


def version_from_pb(m: pb.VersionInfo) -> Version:
    return Version(
        m.id,
        m.model,
        m.parent if m.HasField("parent") else None,
        m.basis if m.HasField("basis") else None,
        m.author,
        m.message,
        datetime.fromisoformat(m.created_at),
        json.loads(m.metadata_json or "{}"),
        m.idempotency_key or None,
        [Entry(e.name, e.kind, e.object, tuple(e.shape), e.dtype, e.nnz, e.nbytes) for e in m.entries],
    )


def model_to_pb(m: Model, refs: list[Ref]) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=m.name,
        created_at=m.created_at.isoformat(),
        config_json=json.dumps(m.config),
        files=sorted(m.files),
        frozen=m.frozen,
        refs=[ref_to_pb(r) for r in refs],
    )


def model_from_pb(m: pb.ModelInfo) -> Model:
    return Model(
        0,
        m.name,
        datetime.fromisoformat(m.created_at),
        json.loads(m.config_json or "{}"),
        {f: "" for f in m.files},
        list(m.frozen),
    )


def ref_to_pb(r: Ref) -> pb.RefInfo:
    return pb.RefInfo(name=r.name, kind=r.kind, version=r.version)


def ref_from_pb(r: pb.RefInfo) -> Ref:
    return Ref(r.name, r.kind, r.version)


def change_to_pb(c: Change) -> pb.TensorChange:
    return pb.TensorChange(name=c.name, kind=c.kind, nnz=c.nnz, norm=c.norm, shape=list(c.shape))


def change_from_pb(c: pb.TensorChange) -> Change:
    return Change(c.name, c.kind, c.nnz, c.norm, tuple(c.shape))


def stats_to_pb(s: VersionStats) -> pb.VersionStat:
    return pb.VersionStat(version=s.version, stored_bytes=s.stored_bytes, full_bytes=s.full_bytes)


def stats_from_pb(s: pb.VersionStat) -> VersionStats:
    return VersionStats(s.version, s.stored_bytes, s.full_bytes)


def steps_to_chunks(steps: list[Step] | None, chunk_bytes: int) -> Iterator[pb.StepsChunk]:
    """A header naming each step's entry kinds, then their parts as tensor chunks keyed VERSION:name/part."""
    header = pb.StepsHeader(on_chain=steps is not None)
    for step in steps or []:
        header.steps.append(
            pb.Step(version=step.version, kinds={n: d.kind.value for n, d in step.entries.items()})
        )
    yield pb.StepsChunk(header=header)
    for step in steps or []:
        parts = {
            f"{step.version}:{part_key(n, k)}": t for n, d in step.entries.items() for k, t in d.parts.items()
        }
        for batch in packed(to_chunks(parts, chunk_bytes), chunk_bytes):
            yield pb.StepsChunk(chunks=batch)


def steps_from_chunks(stream: Iterable[pb.StepsChunk]) -> list[Step] | None:
    messages = iter(stream)
    first = next(messages, None)
    if first is None or not first.HasField("header"):
        raise InvalidInput("a steps stream must start with its header")
    if not first.header.on_chain:
        return None
    parts = from_chunks(chunks_in(messages, "steps"))
    out = []
    for step in first.header.steps:
        entries = {}
        for name, kind_name in step.kinds.items():
            kind = deltas.parse_kind(kind_name)
            keys = {k: f"{step.version}:{part_key(name, k)}" for k in deltas.PARTS[kind]}
            if missing := [key for key in keys.values() if key not in parts]:
                raise InvalidInput(f"the steps stream lacks {missing[:3]}")
            entries[name] = deltas.Delta(kind, {k: parts[key] for k, key in keys.items()})
        out.append(Step(step.version, entries))
    return out
