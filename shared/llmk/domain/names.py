"""Names: one rule for what a user may call a model, branch, tag, tensor or file, and tensor selectors
(hierarchical: `model.layers.3.mlp.up_proj.weight` is layer 3, mlp, tensor)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase

from llmk.errors import InvalidInput

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


# One rule for every name a user gives the store, checked before anything is written. ASCII only, so
# SQLite and PostgreSQL store and compare them alike; lengths fit the narrowest column that holds them.
NAME_MAX = 200  # model, branch, tag and model-file names
TENSOR_NAME_MAX = 400
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:-]*")


def check_name(name: str, what: str = "name") -> None:
    """A model, branch or tag name; all digits would read as a version id."""
    if len(name) > NAME_MAX or not _NAME.fullmatch(name) or name.isdigit():
        raise InvalidInput(
            f"invalid {what} {_shown(name)}: use up to {NAME_MAX} ASCII letters, digits, '.', '-', '_', "
            "starting with a letter or digit (not only digits)"
        )


def check_tensor_name(name: str) -> None:
    if len(name) > TENSOR_NAME_MAX or not _TENSOR_NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid tensor name {_shown(name)}: use up to {TENSOR_NAME_MAX} ASCII letters, digits, "
            "'.', '-', '_', ':', starting with a letter, digit or '_'"
        )


def check_file_name(name: str) -> None:
    """A model file lands in a folder by this name: one plain component, never a path out of it."""
    if len(name) > NAME_MAX or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid model file name {_shown(name)}: one file name of up to {NAME_MAX} ASCII letters, "
            "digits, '.', '-', '_', starting with a letter or digit (no folders, no '..')"
        )


def _shown(name: str) -> str:
    return repr(name if len(name) <= 60 else name[:60] + "...")


# Free text a commit carries: bounded by its column on every backend, and storable by every backend
# (PostgreSQL refuses NUL characters; text must encode as UTF-8).
AUTHOR_MAX = 200
IDEMPOTENCY_KEY_MAX = 200
MESSAGE_MAX = 64 * 1024


def check_text(value: str, what: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidInput(f"{what} of {len(value)} characters is longer than the {limit} allowed")
    if "\x00" in value:
        raise InvalidInput(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid Unicode text (a lone surrogate)") from None


JSON_DEPTH_MAX = 32  # metadata is a flat record in practice; deep nesting only strains parsers


def check_json(value: object, what: str) -> None:
    """JSON both backends store and read back alike: finite numbers only, nested at most JSON_DEPTH_MAX."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > JSON_DEPTH_MAX:
            raise InvalidInput(f"{what} is nested more than {JSON_DEPTH_MAX} levels deep")
        level = [v for item in level for v in _children(item)]
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, TypeError) as e:  # NaN or Infinity, or a value JSON has no form for
        raise InvalidInput(f"{what} is not storable JSON: {e}") from None


def _children(value: object) -> list[object]:
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, list | tuple) else []
