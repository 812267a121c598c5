"""Protobuf codecs of what the store's reads return: changes, stats, steps and where files lie."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from llmk.domain import deltas
from llmk.domain.versions import Version, part_key
from llmk.errors import InvalidInput
from llmk.platform.tensor_stream import chunks_in, from_chunks, packed
from llmk.v1 import store_pb2 as pb
from services.store.interface import Change, Step, VersionStats
from services.store.rpc.codec import entry_from_pb, entry_to_pb, version_from_pb, version_to_pb
from services.store.usecases.materialize import Located, Plan
from services.store.usecases.ports import FileState


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
        yield from packed(parts, chunk_bytes, pb.StepsChunk)


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


def located_to_pb(located: Located) -> pb.LocateReply:
    p = located.plan
    return pb.LocateReply(
        version=located.version,
        lineage=[pb.Lineage(name=n, entries=[entry_to_pb(e) for e in es]) for n, es in p.lineage.items()],
        snapshot=p.snapshot or "",
        snapshot_names=p.snapshot_names,
        depth=p.depth,
        objects=checked_to_pb(located.checked),
    )


def located_from_pb(m: pb.LocateReply) -> Located:
    lineage = {line.name: [entry_from_pb(e) for e in line.entries] for line in m.lineage}
    p = Plan(lineage, m.snapshot or None, list(m.snapshot_names), m.depth)
    return Located(m.version, p, checked_from_pb(m.objects))


def checked_to_pb(checked: Mapping[str, Sequence[int]]) -> list[pb.CheckedObject]:
    return [pb.CheckedObject(sha=sha, state=list(state)) for sha, state in checked.items()]


def checked_from_pb(objects: Iterable[pb.CheckedObject]) -> dict[str, FileState]:
    out = {}
    for o in objects:
        if len(o.state) != 4:
            raise InvalidInput(f"object {o.sha[:12]}: a checked file state has 4 numbers, not {len(o.state)}")
        out[o.sha] = (o.state[0], o.state[1], o.state[2], o.state[3])
    return out


def steps_located_to_pb(
    versions: list[Version] | None, checked: Mapping[str, Sequence[int]]
) -> pb.StepsLocated:
    return pb.StepsLocated(
        on_chain=versions is not None,
        versions=[version_to_pb(v) for v in versions or []],
        objects=checked_to_pb(checked),
    )


def steps_located_from_pb(
    m: pb.StepsLocated,
) -> tuple[list[Version] | None, dict[str, FileState]]:
    versions = [version_from_pb(v) for v in m.versions] if m.on_chain else None
    return versions, checked_from_pb(m.objects)
