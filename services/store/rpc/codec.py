"""Store records (models, refs, versions, entries) to protobuf messages and back; torch-free, so the
metadata client (rpc.history_client) loads without it. The reads' results are coded in rpc.reads_codec."""

from __future__ import annotations

import json
from datetime import datetime

from llmk.domain.versions import Entry, Model, Ref, Version
from llmk.v1 import store_pb2 as pb


def entry_to_pb(e: Entry) -> pb.EntryInfo:
    shape = list(e.shape)
    return pb.EntryInfo(
        name=e.name, kind=e.kind, object=e.object, shape=shape, dtype=e.dtype, nnz=e.nnz, nbytes=e.nbytes
    )


def entry_from_pb(e: pb.EntryInfo) -> Entry:
    return Entry(e.name, e.kind, e.object, tuple(e.shape), e.dtype, e.nnz, e.nbytes)


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
        entries=[entry_to_pb(e) for e in v.entries],
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
        [entry_from_pb(e) for e in m.entries],
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
