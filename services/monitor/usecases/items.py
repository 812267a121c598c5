"""Items of a stream from bytes: CSV with a `text` column, or JSON lines with a `text` field.

Every record becomes an Item or a Rejected with the reason (empty, not UTF-8, no text, too long, malformed
JSON): a bad record never stops the stream and is never silently dropped. An item's id is its `id` field
when it has one, else the run id and its record number, so ids are unique within a run.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmk.errors import InvalidInput

FORMATS = ("csv", "jsonl")
RAW_KEPT = 200  # characters of a rejected record kept for a person to look at
JSON_ID = re.compile(rb'"id"\s*:\s*(?:("(?:[^"\\]|\\.){1,200}")|(-?\d{1,30})\b)')


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rejected:
    id: str
    reason: str
    raw: str = ""


def read_items(
    lines: Iterable[bytes], fmt: str, run: str, max_item_bytes: int = 4096
) -> Iterator[Item | Rejected]:
    """Records of `lines` (raw bytes, newline-terminated) in the given format."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
    reader = _csv_records if fmt == "csv" else _json_records
    for n, record in enumerate(reader(lines, max_item_bytes), start=1):
        yield _with_id(record, f"{run}-{n}")


def guess_format(name: str) -> str:
    return "jsonl" if name.endswith((".jsonl", ".json", ".ndjson")) else "csv"


def _with_id(record: Item | Rejected, fallback: str) -> Item | Rejected:
    if isinstance(record, Rejected):
        return Rejected(record.id or fallback, record.reason, record.raw)
    given = str(record.fields.pop("id", "") or "").strip()
    if len(given) > 200:
        return Rejected(fallback, "the id is longer than 200 characters", given[:RAW_KEPT])
    return Item(given or fallback, record.text, record.fields)


def _check_text(text: Any, raw: str, max_item_bytes: int) -> str | None:
    """Why `text` cannot be scored, or None."""
    if not isinstance(text, str):
        return "no text" if text is None else f"text is a {type(text).__name__}, not a string"
    if not text.strip():
        return "empty text"
    if len(text.encode()) > max_item_bytes:
        return f"text of {len(text.encode())} bytes exceeds the {max_item_bytes}-byte limit"
    return None


def _decoded(
    lines: Iterable[bytes], max_item_bytes: int, id_of: Callable[[bytes], str]
) -> Iterator[str | Rejected]:
    """Lines as text; a line far over the limit is refused unread but keeps its own id (`id_of`)."""
    for line in lines:
        if len(line) > 4 * max_item_bytes + 1024:
            yield Rejected(id_of(line), f"a line of {len(line)} bytes is far over the item limit", "")
            continue
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Rejected(
                "", f"not UTF-8 ({e.reason} at byte {e.start})", line[:RAW_KEPT].decode(errors="replace")
            )


def _json_id(line: bytes) -> str:
    """The `id` field of a JSON line too long to parse, when it has a string or integer one."""
    found = JSON_ID.search(line)
    if found is None:
        return ""
    value = found.group(1) or found.group(2)
    try:
        return str(json.loads(value)) if found.group(1) else value.decode()
    except ValueError:
        return ""


def _json_records(lines: Iterable[bytes], max_item_bytes: int) -> Iterator[Item | Rejected]:
    for line in _decoded(lines, max_item_bytes, _json_id):
        if isinstance(line, Rejected):
            yield line
            continue
        if not line.strip():
            yield Rejected("", "empty line")
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            yield Rejected("", f"malformed JSON: {e}", line[:RAW_KEPT])
            continue
        if not isinstance(obj, dict):
            yield Rejected(
                "", f"a JSON {type(obj).__name__}, not an object with a text field", line[:RAW_KEPT]
            )
            continue
        text = obj.pop("text", None)
        if (why := _check_text(text, line, max_item_bytes)) is not None:
            yield Rejected(str(obj.get("id", "") or ""), why, line[:RAW_KEPT])
            continue
        yield Item("", text, obj)


def _csv_records(lines: Iterable[bytes], max_item_bytes: int) -> Iterator[Item | Rejected]:
    """Rows of a CSV file; a quoted field may span lines (its record ends when its quotes balance)."""
    header: list[str] | None = None
    pending = ""

    def csv_id(line: bytes) -> str:  # the id column of a row too long to keep, when there is one
        if header is None or "id" not in header:
            return ""
        values = next(csv.reader(io.StringIO(line.decode(errors="replace"))), [])
        return values[header.index("id")].strip()[:200] if len(values) == len(header) else ""

    for line in _decoded(lines, max_item_bytes, csv_id):
        if isinstance(line, Rejected):
            pending = ""  # a record with a bad line is dropped whole, and said so
            yield line
            continue
        pending += line
        if pending.count('"') % 2:  # inside a quoted field: the record goes on
            if len(pending) <= 4 * max_item_bytes:
                continue
            yield Rejected("", "an unterminated quoted field", pending[:RAW_KEPT])
            pending = ""
            continue
        record, pending = pending, ""
        if header is None:
            header = _header(record)
            continue
        yield _csv_item(header, record, max_item_bytes)
    if pending:
        yield Rejected("", "an unterminated quoted field at the end of the input", pending[:RAW_KEPT])


def _header(line: str) -> list[str]:
    header = [h.strip() for h in next(csv.reader(io.StringIO(line)), [])]
    if "text" not in header:
        raise InvalidInput(f"the CSV header has no text column: {','.join(header)[:200]}")
    return header


def _csv_item(header: list[str], record: str, max_item_bytes: int) -> Item | Rejected:
    if not record.strip():
        return Rejected("", "empty line")
    try:
        values = next(csv.reader(io.StringIO(record)))
    except (csv.Error, StopIteration) as e:
        return Rejected("", f"malformed CSV: {e}", record[:RAW_KEPT])
    if len(values) != len(header):
        return Rejected("", f"{len(values)} columns where the header has {len(header)}", record[:RAW_KEPT])
    row = dict(zip(header, values, strict=True))
    text = row.pop("text")
    if (why := _check_text(text, record, max_item_bytes)) is not None:
        return Rejected(str(row.get("id", "") or ""), why, record[:RAW_KEPT])
    return Item("", text, row)
