"""Items of a stream from bytes: CSV with a `text` column, or JSON lines with a `text` field.

Every physical line ends up in an Item or a Rejected with the reason (empty, not UTF-8, no text, too long,
malformed, a NUL byte, a lone surrogate, nested too deep): a bad record never stops the stream and is never
silently dropped. Lines end at \\n, \\r\\n or a lone \\r; a UTF-8 byte order mark is skipped. A CSV record
spans lines only where a quoted field is closed cleanly on a later line and the record then has the
header's columns; otherwise the line that opened the quote is rejected alone and the next line is read on
its own, so a stray quote costs one row, never the rest of the file. An item's id is its `id` field when it
has one, else the run id and its record number, so ids are unique within a run.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmk.errors import InvalidInput

FORMATS = ("csv", "jsonl")
RAW_KEPT = 200  # characters of a rejected record kept for a person to look at
MAX_ID = 200
MAX_DEPTH = 16  # nesting of a JSON item's other fields
_LINE_END = re.compile(rb"\r\n|\r|\n")
_START, _PLAIN, _QUOTED, _AFTER, _BROKEN = range(5)  # where a CSV line leaves its quoting
_JSON_ID = re.compile(r'"id"\s*:\s*(?:("(?:[^"\\]|\\.){1,200}")|(-?\d{1,30})\b)')
OVER = "far over the"  # in the reason of a line too long to read whole


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
    source: Iterable[bytes], fmt: str, run: str, max_item_bytes: int = 4096
) -> Iterator[Item | Rejected]:
    """Records of `source` (a binary file, or chunks of bytes) in the given format."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {fmt!r}; choose {' or '.join(FORMATS)}")
    lines = _decoded(physical_lines(source, _line_cap(max_item_bytes)), max_item_bytes)
    records = _csv_records(lines, max_item_bytes) if fmt == "csv" else _json_records(lines, max_item_bytes)
    for n, record in enumerate(records, start=1):
        yield _with_id(record, f"{run}-{n}")


def read_message(body: bytes, fallback: str, max_item_bytes: int = 4096) -> Item | Rejected:
    """One message's JSON object as an item (its line ends are the JSON's own); `fallback` is its id
    when it has none of its own (or an unusable one)."""
    line = _decoded([body.removeprefix(b"\xef\xbb\xbf")], max_item_bytes)
    return _with_id(next(_json_records(line, max_item_bytes)), fallback)


def guess_format(name: str) -> str:
    return "jsonl" if name.endswith((".jsonl", ".json", ".ndjson")) else "csv"


def physical_lines(source: Iterable[bytes], cap: int) -> Iterator[bytes]:
    """Lines with their ends; a line over `cap` bytes comes as its first cap + 1 bytes (the rest is
    skipped), so one endless line cannot fill the memory."""
    read = getattr(source, "read1", None) or getattr(source, "read", None)
    chunks = iter(lambda: read(1 << 16), b"") if read is not None else iter(source)
    rest, cut = b"", False
    for chunk in chunks:
        rest, pos = rest + chunk, 0
        for m in _LINE_END.finditer(rest):
            if m.group() == b"\r" and m.end() == len(rest):
                break  # perhaps the first half of \r\n
            if not cut:
                yield rest[pos : m.end()]
            cut, pos = False, m.end()
        rest = rest[pos:]
        if len(rest) > cap:
            if not cut:
                yield rest[: cap + 1]
            rest, cut = b"", True
    if rest and not cut:
        yield rest


def _line_cap(max_item_bytes: int) -> int:
    return 4 * max_item_bytes + 1024


def _with_id(record: Item | Rejected, fallback: str) -> Item | Rejected:
    if isinstance(record, Rejected):
        usable = record.id and string_problem(record.id) is None and len(record.id) <= MAX_ID
        return Rejected(record.id if usable else fallback, record.reason, _printable(record.raw))
    given = str(record.fields.pop("id", "") or "").strip()
    if len(given) > MAX_ID:
        return Rejected(fallback, f"the id is longer than {MAX_ID} characters", _printable(given))
    if (why := string_problem(given)) is not None:
        return Rejected(fallback, f"the id {why}", _printable(given))
    return Item(given or fallback, record.text, record.fields)


def _printable(raw: str) -> str:
    """`raw`, cut, with NUL and lone surrogates spelled out (a database refuses them)."""
    raw = raw[:RAW_KEPT].replace("\x00", "\\x00")
    return raw.encode("utf-8", "backslashreplace").decode("utf-8")


def string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "holds a NUL byte"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"holds a lone surrogate ({text[e.start]!a})"
    return None


def _check_text(text: Any, max_item_bytes: int) -> str | None:
    """Why `text` cannot be scored, or None."""
    if not isinstance(text, str):
        return "no text" if text is None else f"text is a {type(text).__name__}, not a string"
    if (why := string_problem(text)) is not None:
        return f"the text {why}"
    if not text.strip():
        return "empty text"
    if len(text.encode()) > max_item_bytes:
        return f"text of {len(text.encode())} bytes exceeds the {max_item_bytes}-byte limit"
    return None


def _check_fields(value: Any, depth: int = 0) -> str | None:
    """Why an item's other fields cannot be stored, or None."""
    if depth > MAX_DEPTH:
        return f"fields nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        return None if (why := string_problem(value)) is None else f"a field {why}"
    if isinstance(value, float) and value - value != 0:
        return f"a field is {value}, not a finite number"
    children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        return next((why for v in children if (why := _check_fields(v, depth + 1)) is not None), None)
    return None


def _decoded(lines: Iterable[bytes], max_item_bytes: int) -> Iterator[str | Rejected]:
    cap = _line_cap(max_item_bytes)
    for n, line in enumerate(lines):
        if len(line) > cap:  # its start is kept: a record's id is often there
            why = f"a line over {cap} bytes, {OVER} {max_item_bytes}-byte item limit"
            yield Rejected("", why, line[:cap].decode(errors="replace"))
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Rejected("", f"not UTF-8 ({e.reason} at byte {e.start})", line.decode(errors="replace"))
            continue
        yield text.removeprefix("\ufeff") if n == 0 else text


def _json_records(lines: Iterable[str | Rejected], max_item_bytes: int) -> Iterator[Item | Rejected]:
    for line in lines:
        if isinstance(line, Rejected):
            yield _json_over(line) if OVER in line.reason else line
        elif not line.strip():
            yield Rejected("", "empty line")
        else:
            yield _json_record(line, max_item_bytes)


def _json_over(line: Rejected) -> Rejected:
    """A JSON line too long to read keeps its own id when the part read names one."""
    found = _JSON_ID.search(line.raw)
    if found is None:
        return line
    try:
        given = str(json.loads(found.group(1))) if found.group(1) else found.group(2)
    except ValueError:
        return line
    return Rejected(given, line.reason, line.raw)


def _json_record(line: str, max_item_bytes: int) -> Item | Rejected:
    try:
        obj = json.loads(line)
    except ValueError as e:
        return Rejected("", f"malformed JSON: {e}", line)
    except RecursionError:
        return Rejected("", "JSON nested too deeply", line)
    if not isinstance(obj, dict):
        return Rejected("", f"a JSON {type(obj).__name__}, not an object with a text field", line)
    given_id = obj.get("id", "")
    text = obj.pop("text", None)
    others = {k: v for k, v in obj.items() if k != "id"}  # the id is checked with its fallback
    if (why := _check_text(text, max_item_bytes) or _check_fields(others)) is not None:
        return Rejected(given_id if isinstance(given_id, str) else "", why, line)
    return Item("", text, obj)


def _csv_records(lines: Iterable[str | Rejected], max_item_bytes: int) -> Iterator[Item | Rejected]:
    """Rows of a CSV file; a record spans lines only where a quoted field closes cleanly (module doc)."""
    source, again = iter(lines), deque[str | Rejected]()
    header: list[str] | None = None
    while (line := again.popleft() if again else next(source, None)) is not None:
        if header is None:
            header = _header(line)
        elif isinstance(line, Rejected):
            yield _csv_over(header, line) if OVER in line.reason else line
        elif _scan(line, _START) != _QUOTED:
            yield _csv_item(header, line, max_item_bytes)
        elif (record := _continued(line, source, again, len(header), max_item_bytes)) is not None:
            yield _csv_item(header, record, max_item_bytes)
        else:
            yield Rejected("", "a quoted field that is not closed on this line", line)


def _csv_over(header: list[str], line: Rejected) -> Rejected:
    """A CSV row too long to read keeps its own id when its id column lies in the part read."""
    if "id" not in header:
        return line
    values = next(csv.reader(io.StringIO(line.raw, newline="")), [])
    at = header.index("id")
    return Rejected(values[at].strip(), line.reason, line.raw) if len(values) > at + 1 else line


def _continued(
    first: str, source: Iterator[str | Rejected], again: deque[str | Rejected], columns: int, limit: int
) -> str | None:
    """`first` joined with the lines that close its quoted field, if that makes a clean record of
    `columns` fields; else None, and the lines looked at are read again on their own."""
    taken: list[str | Rejected] = []
    record, state = first, _QUOTED
    while state == _QUOTED and len(record) <= 4 * limit:
        line = again.popleft() if again else next(source, None)
        if line is None:
            break
        taken.append(line)
        if isinstance(line, Rejected):
            break
        record, state = record + line, _scan(line, _QUOTED)
    if state not in (_QUOTED, _BROKEN) and len(_fields(record) or ()) == columns:
        return record
    again.extendleft(reversed(taken))
    return None


def _scan(line: str, state: int) -> int:
    """The quoting state at the end of `line`, starting in `state` (strict: a closing quote must end its
    field). Only the quoted state goes on to the next line."""
    i, n = 0, len(line)
    while i < n:
        if state == _QUOTED:
            j = line.find('"', i)
            if j < 0:
                return _QUOTED
            state, i = (_QUOTED, j + 2) if line.startswith('"', j + 1) else (_AFTER, j + 1)
        elif state == _AFTER:
            if line[i] != ",":
                return _AFTER if line[i] in "\r\n" else _BROKEN
            state, i = _START, i + 1
        elif state == _START and line[i] == '"':
            state, i = _QUOTED, i + 1
        else:  # an unquoted field: a quote in it is a plain character
            j = line.find(",", i)
            if j < 0:
                return _PLAIN
            state, i = _START, j + 1
    return state


def _fields(record: str) -> list[str] | None:
    try:
        return next(csv.reader(io.StringIO(record, newline="")), [])
    except csv.Error:
        return None


def _header(line: str | Rejected) -> list[str]:
    if isinstance(line, Rejected):
        raise InvalidInput(f"the CSV header cannot be read: {line.reason}")
    header = [h.strip() for h in _fields(line) or ()]
    if "text" not in header:
        raise InvalidInput(f"the CSV header has no text column: {_printable(','.join(header))}")
    return header


def _csv_item(header: list[str], record: str, max_item_bytes: int) -> Item | Rejected:
    if not record.strip():
        return Rejected("", "empty line")
    values = _fields(record)
    if values is None:
        return Rejected("", "malformed CSV (a field over the CSV reader's limit, or broken quoting)", record)
    if len(values) != len(header):
        return Rejected("", f"{len(values)} columns where the header has {len(header)}", record)
    row = dict(zip(header, values, strict=True))
    text = row.pop("text")
    others = {k: v for k, v in row.items() if k != "id"}  # the id is checked with its fallback
    if (why := _check_text(text, max_item_bytes) or _check_fields(others)) is not None:
        return Rejected(row.get("id", ""), why, record)
    return Item("", text, row)
