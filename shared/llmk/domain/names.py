"""Hierarchical tensor names: `model.layers.3.mlp.up_proj.weight` is layer 3, mlp, tensor."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

GLOB_CHARS = set("*?[")


def matches(name: str, selector: str) -> bool:
    """A selector is a glob (`*.mlp.*`) or a dotted prefix (`model.layers.3` is not layer 30)."""
    if not selector:
        return True
    if GLOB_CHARS & set(selector):
        return fnmatchcase(name, selector)
    prefix = selector.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def select(names: Iterable[str], selector: str) -> list[str]:
    return [n for n in names if matches(n, selector)]


def any_match(name: str, patterns: Iterable[str]) -> bool:
    return any(matches(name, p) for p in patterns)
