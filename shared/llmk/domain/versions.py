"""Records of the version graph. `parent` is history; `basis` is what the entries apply to.

A normal commit has basis == parent. A rollback is a new version whose basis is the older
version it restores, so history only grows and nothing is copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


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


def part_key(tensor_name: str, part: str) -> str:
    """Key of one delta part inside a pack object."""
    return f"{tensor_name}/{part}"
