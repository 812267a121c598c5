"""Interactions from text: CSV with a header, or JSON lines; each record an Interaction or a Rejection.

Columns are user, item, rating, timestamp (MovieLens' userId, movieId are accepted too). Ids are integers:
they are kept exactly in the model's id tensors. A bad record never stops the stream and is never dropped
silently: it becomes a Rejection with the reason and the first characters of the record.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

from llmk.errors import InvalidInput
from services.rec.interface import Interaction, Rejection

COLUMNS = ("user", "item", "rating", "timestamp")
ALIASES = {"userid": "user", "movieid": "item", "itemid": "item"}
RAW_KEPT = 200
FORMATS = ("csv", "jsonl")


def guess_format(name: str) -> str:
    return "jsonl" if name.endswith((".jsonl", ".json", ".ndjson")) else "csv"


def read_interactions(lines: Iterable[str], fmt: str) -> Iterator[Interaction | Rejection]:
    """Records of `lines` (text lines, newline optional) in order; a CSV's first line is its header."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
    if fmt == "jsonl":
        yield from _json_records(lines)
    else:
        yield from _csv_records(iter(lines))


def _json_records(lines: Iterable[str]) -> Iterator[Interaction | Rejection]:
    for n, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except ValueError as e:
            yield Rejection(n, f"malformed JSON: {e}", line[:RAW_KEPT])
            continue
        if not isinstance(obj, dict):
            yield Rejection(n, f"a JSON {type(obj).__name__}, not an object", line[:RAW_KEPT])
            continue
        yield _interaction(n, {ALIASES.get(str(k).lower(), str(k)): v for k, v in obj.items()}, line)


def _csv_records(lines: Iterator[str]) -> Iterator[Interaction | Rejection]:
    first = next(lines, "")
    header = [ALIASES.get(h.strip().lower(), h.strip().lower()) for h in next(csv.reader([first]), [])]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InvalidInput(f"the CSV header lacks column(s) {missing}: {first.strip()[:200]!r}")
    for n, line in enumerate(lines, start=1):
        values = next(csv.reader([line]), [])
        if len(values) != len(header):
            yield Rejection(n, f"{len(values)} columns where the header has {len(header)}", line[:RAW_KEPT])
            continue
        yield _interaction(n, dict(zip(header, values, strict=True)), line)


def _interaction(n: int, row: dict[str, Any], raw: str) -> Interaction | Rejection:
    try:
        user, item, timestamp = (_integer(row.get(c), c) for c in ("user", "item", "timestamp"))
        rating = float(row.get("rating"))  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        return Rejection(n, f"malformed record: {e}", raw.strip()[:RAW_KEPT])
    if not math.isfinite(rating):
        return Rejection(n, f"malformed record: rating {rating} is not a number", raw.strip()[:RAW_KEPT])
    return Interaction(user, item, rating, timestamp)


def _integer(value: Any, column: str) -> int:
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{column} is missing")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{column} {value!r} is not an integer")
    found = int(value)
    if not 0 <= found < 2**62:  # -1 marks a spare row in the id tensors
        raise ValueError(f"{column} {found} is out of range [0, 2**62)")
    return found
