"""Every record of a stream becomes an item or a rejection that says why: nothing crashes the monitor,
nothing is dropped silently, and the count of records read is always items + rejections."""

from __future__ import annotations

import io

import pytest

from llmk.errors import InvalidInput
from services.monitor.usecases.items import Item, Rejected, read_items


def read(data: bytes, fmt: str, limit: int = 64) -> list[Item | Rejected]:
    return list(read_items(io.BytesIO(data), fmt, "run", limit))


def reasons(records: list[Item | Rejected]) -> list[str]:
    return [r.reason if isinstance(r, Rejected) else "ok" for r in records]


def test_csv_keeps_other_columns_reads_quoted_newlines_and_numbers_items_within_the_run() -> None:
    data = b'id,text,source\n7,"Shares jump, again",wire\n,"two\nlines",blog\n'
    items = read(data, "csv")
    assert items == [
        Item("7", "Shares jump, again", {"source": "wire"}),
        Item("run-2", "two\nlines", {"source": "blog"}),
    ]


def test_bad_csv_records_are_rejected_with_their_reason() -> None:
    data = (
        b"text,ticker\n"
        b"fine,A\n"
        b"\n"  # empty line
        b",B\n"  # no text
        b"\xff\xfe broken,C\n"  # not UTF-8
        b"one,two,three\n" + b"x" * 80 + b",D\n"  # too many columns  # over the 64-byte limit
        b'"never closed,E\n'
    )
    records = read(data, "csv")
    assert reasons(records) == [
        "ok",
        "empty line",
        "empty text",
        "not UTF-8 (invalid start byte at byte 0)",
        "3 columns where the header has 2",
        "text of 80 bytes exceeds the 64-byte limit",
        "an unterminated quoted field at the end of the input",
    ]
    assert len({r.id for r in records}) == len(records)  # every record has its own id


def test_a_csv_without_a_text_column_is_refused_up_front() -> None:
    with pytest.raises(InvalidInput, match="no text column"):
        read(b"headline,label\nx,1\n", "csv")


def test_bad_json_lines_are_rejected_with_their_reason() -> None:
    data = b'{"text": "ok", "id": "a1", "ticker": "X"}\n\nnot json\n[1, 2]\n'
    data += b'{"text": 5}\n{"title": "x"}\n\xc3\x28\n'
    records = read(data, "jsonl")
    assert records[0] == Item("a1", "ok", {"ticker": "X"})
    assert [r.reason for r in records[1:] if isinstance(r, Rejected)] == [
        "empty line",
        "malformed JSON: Expecting value: line 1 column 1 (char 0)",
        "a JSON list, not an object with a text field",
        "text is a int, not a string",
        "no text",
        "not UTF-8 (invalid continuation byte at byte 0)",
    ]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown format"):
        read(b"", "xml")


def test_a_line_far_over_the_limit_keeps_its_own_id_when_it_has_one() -> None:
    big = "x" * 50_000
    jsonl = [
        f'{{"text": "{big}", "id": "row-7"}}\n',
        f'{{"id": 12, "text": "{big}"}}\n',
        f'{{"text": "{big}"}}\n',
    ]
    got = list(read_items([line.encode() for line in jsonl], "jsonl", "run"))
    assert [r.id for r in got] == ["row-7", "12", "run-3"]
    assert all(isinstance(r, Rejected) and "far over the item limit" in r.reason for r in got)
    rows = [b"id,text\n", b"r9," + big.encode() + b"\n"]
    assert [r.id for r in read_items(rows, "csv", "run")] == ["r9"]
