"""Records of the version graph. `parent` is history; `basis` is what the entries apply to.

A normal commit has basis == parent. A rollback is a new version whose basis is the older
version it restores, so history only grows and nothing is copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from llmk.domain.names import AUTHOR_MAX, IDEMPOTENCY_KEY_MAX, MESSAGE_MAX, check_json, check_text
from llmk.errors import InvalidInput

MAIN = "main"  # the branch a model is created on


@dataclass(frozen=True)
class CommitInfo:
    author: str = "llmk"
    message: str = ""
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = None

    def check(self) -> None:
        """Refuse text no backend can store as given, before anything is written."""
        check_text(self.author, "author", AUTHOR_MAX)
        check_text(self.message, "commit message", MESSAGE_MAX)
        check_text(self.idempotency_key or "", "idempotency key", IDEMPOTENCY_KEY_MAX)
        check_json(self.metadata or {}, "commit metadata")


@dataclass(frozen=True)
class Model:
    id: int
    name: str
    created_at: datetime
    config: dict[str, Any]
    files: dict[str, str]  # file name -> blob sha256 (config.json, tokenizer files)
    frozen: list[str]


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str
    object: str  # sha256 of the pack holding this entry's parts
    shape: tuple[int, ...]
    dtype: str
    nnz: int
    nbytes: int


@dataclass(frozen=True)
class Version:
    id: int
    model: str
    parent: int | None
    basis: int | None
    author: str
    message: str
    created_at: datetime
    metadata: dict[str, Any]
    idempotency_key: str | None = None
    entries: list[Entry] = field(default_factory=list)


@dataclass(frozen=True)
class Ref:
    name: str
    kind: str  # "branch" | "tag"
    version: int


@dataclass(frozen=True)
class Snapshot:
    """A cached full materialization of a version: an ordinary object, kept while the cache has room."""

    version: int
    object: str
    size: int
    used_at: datetime


def part_key(tensor_name: str, part: str) -> str:
    """Key of one delta part inside a pack object."""
    return f"{tensor_name}/{part}"


@dataclass(frozen=True)
class VersionEvent:
    """A branch moved to a new version. `changed` names the tensors that differ from `parent`; None means any
    may (a rollback), () none (a squash). Carried as JSON between tiers: ids and names, never tensors."""

    model: str
    branch: str
    version: int
    parent: int | None
    changed: tuple[str, ...] | None

    def encode(self) -> dict[str, Any]:
        changed = None if self.changed is None else list(self.changed)
        return {
            "model": self.model,
            "branch": self.branch,
            "version": self.version,
            "parent": self.parent,
            "changed": changed,
        }

    @classmethod
    def decode(cls, body: Mapping[str, Any]) -> VersionEvent:
        """The event in `body`; InvalidInput when a field is missing or of the wrong type."""
        try:
            model, branch, version = body["model"], body["branch"], body["version"]
            parent, changed = body["parent"], body["changed"]
        except (KeyError, TypeError) as e:
            raise InvalidInput(f"not a version event: {body!r}") from e
        ints = [version] if parent is None else [version, parent]
        if not (isinstance(model, str) and isinstance(branch, str)) or not all(_is_int(i) for i in ints):
            raise InvalidInput(f"not a version event: {body!r}")
        if changed is not None and not (
            isinstance(changed, list | tuple) and all(isinstance(n, str) for n in changed)
        ):
            raise InvalidInput(f"not a version event: {body!r}")
        return cls(model, branch, version, parent, None if changed is None else tuple(changed))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
