"""Complete new values against a stored version, tensor by tensor, without materializing the version.

`commit --from FILE` hands over every tensor in full and the store keeps only what changed. The parent is
read from its object files one tensor at a time: a tensor whose stored value is its base is compared with
the mapped file in place (nothing copied); one with deltas above its base is rebuilt in one reusable
buffer, since writing into a mapped tensor copies each of its pages on write (for a 1% change spread over a
538 MB model that alone took about a second, bench/results/speed-notes.md). The parent's object files are
hashed on a second thread meanwhile; the caller gets the entries only once every file checked out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import torch

from llmk.domain import deltas
from llmk.domain.versions import Entry, part_key
from llmk.errors import InvalidDelta
from services.store.usecases.commit_checks import stored_dtype
from services.store.usecases.materialize import Plan
from services.store.usecases.ports import Objects

Meta = tuple[tuple[int, ...], torch.dtype]


def entries(
    objects: Objects, p: Plan, tensors: Mapping[str, torch.Tensor], reshape: bool
) -> dict[str, deltas.Delta]:
    """The cheapest exact entry for each tensor of `tensors` that differs from the planned version (new
    tensors in full); InvalidDelta for a shape or dtype change unless `reshape`, before any value is read."""
    with _Files(objects) as files:
        stored = files.metas(p)
        for name, new in tensors.items():
            old = stored.get(name)
            if old is not None and old != _meta(new) and not reshape:
                raise InvalidDelta(
                    f"{name}: {tuple(new.shape)} {new.dtype} does not match stored {old[0]} {old[1]}"
                )
        checks = _Checks(objects, files.shas(p))
        try:
            out: dict[str, deltas.Delta] = {}
            scratch = _Scratch()
            with _one_thread():
                for name, new in tensors.items():
                    if stored.get(name) != _meta(new):  # a new tensor, or a reshape the commit declared
                        out[name] = deltas.full(new)
                    elif (d := deltas.encode_exact(files.value(p, name, scratch), new)) is not None:
                        out[name] = d
        except BaseException:
            checks.abandon()
            raise
        checks.wait()
    return out


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run this thread's torch ops on itself alone: replaying a chain is thousands of small ops, and on a
    busy 2-core host each parallel one waited for a second core (replaying 10 deltas of every tensor of
    SmolLM2 took 0.68 s with 2 threads, 0.43 s with 1, load 6). OpenMP keeps the count per thread, so
    other threads of the process (a serving compute thread) keep theirs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _meta(t: torch.Tensor) -> Meta:
    return tuple(t.shape), t.dtype


class _Files:
    """The planned version's object files, each opened once and read before its hash is checked."""

    def __init__(self, objects: Objects):
        self.objects = objects
        self._open: dict[str, Any] = {}

    def __enter__(self) -> _Files:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in self._open.values():
            f.__exit__(None, None, None)
        self._open.clear()

    def _file(self, sha: str) -> Any:
        if sha not in self._open:
            self._open[sha] = self.objects.open_unchecked(sha).__enter__()
        return self._open[sha]

    @staticmethod
    def shas(p: Plan) -> list[str]:
        found = {e.object for es in p.lineage.values() for e in es}
        return sorted(found | ({p.snapshot} if p.snapshot else set()))

    def metas(self, p: Plan) -> dict[str, Meta]:
        out = {n: (es[0].shape, stored_dtype(es[0].dtype)) for n, es in p.lineage.items()}
        if p.snapshot:
            f = self._file(p.snapshot)
            for n in p.snapshot_names:
                if n not in out:
                    sl = f.get_slice(n)
                    out[n] = (tuple(sl.get_shape()), stored_dtype(sl.get_dtype()))
        return out

    def value(self, p: Plan, name: str, scratch: _Scratch) -> torch.Tensor:
        """The tensor's stored value: its base as mapped, or rebuilt in `scratch` when deltas lie above it
        (valid until the next call)."""
        lineage = p.lineage.get(name, [])
        if lineage and lineage[-1].kind == deltas.Kind.FULL:
            base, above = self._part(lineage[-1], "tensor"), lineage[:-1]
        else:
            assert p.snapshot is not None  # a plan always ends at a full value or a snapshot
            base, above = self._file(p.snapshot).get_tensor(name), lineage
        if not above:
            return base
        value = scratch.copy_of(base)
        for e in reversed(above):  # oldest first, with the very code a read applies them with
            kind = deltas.Kind(e.kind)
            value = deltas.apply(value, deltas.Delta(kind, {k: self._part(e, k) for k in deltas.PARTS[kind]}))
        return value

    def _part(self, e: Entry, part: str) -> torch.Tensor:
        return self._file(e.object).get_tensor(part_key(e.name, part))


class _Scratch:
    """One buffer, grown to the largest tensor rebuilt: fresh memory per tensor would fault every page."""

    def __init__(self) -> None:
        self._buf = torch.empty(0, dtype=torch.uint8)

    def copy_of(self, t: torch.Tensor) -> torch.Tensor:
        nbytes = t.numel() * t.element_size()
        if self._buf.numel() < nbytes:
            self._buf = torch.empty(nbytes, dtype=torch.uint8)
        out = self._buf[:nbytes]
        # a plain copy on this thread: torch's parallel copy waits for a second core on a busy host
        out.numpy()[:] = t.detach().reshape(-1).view(torch.uint8).numpy()
        return out.view(t.dtype).view(t.shape)


class _Checks:
    """Hash the files on one background thread while the diff reads them."""

    def __init__(self, objects: Objects, shas: list[str]):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="llmk-check")
        self._pending: list[Future[None]] = [self._pool.submit(objects.check, sha) for sha in shas]

    def wait(self) -> None:
        """Corrupt if any file failed its hash."""
        try:
            for f in self._pending:
                f.result()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def abandon(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
