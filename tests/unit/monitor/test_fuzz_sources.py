"""Fuzz targets for the monitor's sources (CSV and JSON-lines files, queue message bodies): any bytes give
items and rejections, or one InvalidInput for a header that cannot be read; never another exception, and
never a lost line. `make test` runs each briefly; `make fuzz` runs them long (LLMK_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmk.errors import InvalidInput
from services.monitor.usecases.items import Item, Rejected, read_items, read_message

FUZZ = settings(
    max_examples=int(os.environ.get("LLMK_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LIMIT = 256
LINE_END = re.compile(rb"\r\n|\r|\n")
OPENING_QUOTE = re.compile(rb'(^|[,\r\n]|\xef\xbb\xbf)"')
PIECES = [b'"', b",", b"\n", b"\r", b"\r\n", b"\x00", b"\xef\xbb\xbf", b"\xff", b"\xc3\xa9", b"a", b"x" * 300]
JSON_PIECES = [b"{", b"}", b"[", b'"text"', b'"id"', b":", b",", b'"\\u0000"', b'"\\ud800"', b"1e999", b"\n"]


def lines_of(data: bytes) -> int:
    """Physical lines: each line end, and what follows the last one."""
    return len(LINE_END.findall(data)) + (1 if LINE_END.split(data)[-1] else 0)


def storable(record: Item | Rejected) -> None:
    """What the monitor stores: no NUL, no lone surrogate, ids within 200 characters."""
    texts = [record.id, record.text] if isinstance(record, Item) else [record.id, record.reason, record.raw]
    for text in texts:
        assert "\x00" not in text
        text.encode("utf-8")
    assert 0 < len(record.id) <= 200
    assert isinstance(record, Item) or record.reason


def read(data: bytes, fmt: str) -> list[Item | Rejected] | None:
    try:
        return list(read_items([data], fmt, "run", LIMIT))
    except InvalidInput as e:
        error = str(e)
    assert fmt == "csv"
    assert "header" in error
    return None


def body(pieces: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(pieces), max_size=40).map(b"".join))


@FUZZ
@given(rows=body(PIECES))
@example(rows=b'New 5" screen\n"hi\nlast\n')
def test_a_csv_source(rows: bytes) -> None:
    data = b"id,text\n" + rows
    records = read(data, "csv")
    assert records is not None
    for record in records:
        storable(record)
    if not OPENING_QUOTE.search(rows):  # quotes only inside fields (stray): one record per line
        assert len(records) == lines_of(data) - 1


@FUZZ
@given(data=body(JSON_PIECES) | body(PIECES))
def test_a_json_lines_source(data: bytes) -> None:
    records = read(data, "jsonl")
    assert records is not None
    assert len(records) == lines_of(data)  # one record per line, whatever the line holds
    for record in records:
        storable(record)


@FUZZ
@given(data=body(JSON_PIECES) | body(PIECES))
def test_a_queue_message(data: bytes) -> None:
    storable(read_message(data, "fallback", LIMIT))


@FUZZ
@given(data=body(PIECES))
def test_any_csv_header(data: bytes) -> None:
    for record in read(data, "csv") or []:
        storable(record)
