"""A model's versions and refs: the part of the store that reads and moves metadata only.

It never opens an object file and never imports torch, so the commands that only list, log, branch or tag
skip torch's import (1.6 s of a 4 s start). The Store extends it with everything that reads or writes tensors.
"""

from __future__ import annotations

import logging

from llmk.domain.names import NAME_MAX, check_name, check_text
from llmk.domain.versions import MAIN, Model, Ref, Version
from llmk.errors import InvalidInput, NotFound
from services.store.usecases.ports import Catalog

log = logging.getLogger(__name__)


class History:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def model(self, name: str) -> Model:
        if self.catalog.ref(name, MAIN) is None:  # no model row either, or an import that died half-way
            raise NotFound(f"unknown model {name!r}")
        return self.catalog.model(name)

    def models(self) -> list[Model]:
        """Models with a main branch: one without is an import that died before its first version, which
        `create_model` (and so `import --if-missing`) takes over."""
        return [m for m in self.catalog.models() if self.catalog.ref(m.name, MAIN) is not None]

    def unfreeze(self, model: str, patterns: list[str]) -> Model:
        """Remove freeze patterns, each exactly as it was given to `freeze`."""
        m = self.catalog.model(model)
        unknown = [pat for pat in patterns if pat not in m.frozen]
        if not patterns or unknown:
            raise InvalidInput(f"{unknown} not frozen in {model!r}; its freeze patterns: {m.frozen}")
        log.warning("model %r: unfrozen %s", model, patterns)  # not versioned, so leave a trace
        return self.catalog.update_model(model, frozen=[pat for pat in m.frozen if pat not in patterns])

    def resolve(self, model: str, ref: str | None = None) -> int:
        """A version id from a branch, a tag or a number (default: the main branch)."""
        ref = ref or MAIN
        check_text(ref, "ref", NAME_MAX)
        found = self.catalog.ref(model, ref)
        if found is not None:
            return found.version
        if ref.isascii() and ref.isdigit() and int(ref) < 2**63:  # version ids are int64 on every backend
            return self.catalog.version(model, int(ref), with_entries=False).id
        raise NotFound(f"model {model!r} has no branch, tag or version {ref!r}")

    def version(self, model: str, ref: str | None = None) -> Version:
        return self.catalog.version(model, self.resolve(model, ref))

    def refs(self, model: str) -> list[Ref]:
        return self.catalog.refs(model)

    def branch(self, model: str, name: str, from_ref: str | None = None) -> Ref:
        check_name(name, "branch name")
        return self.catalog.create_ref(model, name, "branch", self.resolve(model, from_ref))

    def tag(self, model: str, name: str, ref: str | None = None) -> Ref:
        check_name(name, "tag name")
        return self.catalog.create_ref(model, name, "tag", self.resolve(model, ref))

    def log(self, model: str, ref: str | None = None, limit: int = 100) -> list[Version]:
        if limit < 0:
            raise InvalidInput(f"limit must be 0 or more, got {limit}")
        by_id = {v.id: v for v in self.catalog.versions(model)}
        out: list[Version] = []
        vid: int | None = self.resolve(model, ref)
        while vid is not None and len(out) < limit:
            out.append(by_id[vid])
            vid = by_id[vid].parent
        return out

    def head(self, model: str, branch: str = MAIN) -> int:
        """The version a branch points at: one row read, no entries (what followers poll)."""
        found = self.catalog.ref(model, branch)
        if found is None or found.kind != "branch":
            tag = f" ({branch!r} is a tag, and tags never move)" if found else ""
            raise NotFound(f"model {model!r} has no branch {branch!r}{tag}")
        return found.version

    def changed(self, model: str, a: int, b: int) -> list[str]:
        """Names of the tensors whose values may differ between versions `a` and `b`, from entries alone:
        a tensor whose newest entry is the same on both basis chains has the same value in both."""
        newest_a, newest_b = self._newest_entries(model, a), self._newest_entries(model, b)
        return sorted(n for n in newest_a.keys() | newest_b.keys() if newest_a.get(n) != newest_b.get(n))

    def _newest_entries(self, model: str, version_id: int) -> dict[str, int]:
        newest: dict[str, int] = {}
        for v in self.catalog.basis_chain(model, version_id):
            for e in v.entries:
                newest.setdefault(e.name, v.id)
        return newest

    def close(self) -> None:
        """Nothing to release in-process; here so both implementations of the interface close alike."""
