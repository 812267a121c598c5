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
        "a quoted field that is not closed on this line",
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
        f'{{"id": "row-7", "text": "{big}"}}\n',
        f'{{"id": 12, "text": "{big}"}}\n',
        f'{{"text": "{big}", "id": "after-the-text"}}\n',  # past the part read: the run's own id
    ]
    got = list(read_items([line.encode() for line in jsonl], "jsonl", "run"))
    assert [r.id for r in got] == ["row-7", "12", "run-3"]
    assert all(isinstance(r, Rejected) and "far over the" in r.reason for r in got)
    rows = [b"id,text\n", b"r9," + big.encode() + b"\n"]
    assert [r.id for r in read_items(rows, "csv", "run")] == ["r9"]


def test_a_stray_or_unclosed_quote_costs_its_own_row_only() -> None:
    data = b'text,ticker\nNew 5" screen,A\n"hi,B\nlast,C\nmore,D\n"two\nlines",E\n'
    records = read(data, "csv")
    assert reasons(records) == ["ok", "a quoted field that is not closed on this line", "ok", "ok", "ok"]
    assert [r.text for r in records if isinstance(r, Item)] == ['New 5" screen', "last", "more", "two\nlines"]


def test_a_quote_closed_into_a_bad_record_leaves_every_line_to_itself() -> None:
    data = b'text,ticker\n"opens,A\nmiddle,B\ncloses" here,C\n"x""y",D\n'
    assert reasons(read(data, "csv")) == [
        "a quoted field that is not closed on this line",
        "ok",
        "ok",  # `closes" here` is a plain field with a quote in it
        "ok",
    ]


@pytest.mark.parametrize("end", [b"\r", b"\r\n", b"\n"])
def test_any_line_end_and_a_byte_order_mark_are_read(end: bytes) -> None:
    csv_data = b"\xef\xbb\xbf" + end.join([b"id,text", b"a,first", b'b,"two' + end + b'lines"', b""])
    assert [(r.id, r.text) for r in read(csv_data, "csv") if isinstance(r, Item)] == [
        ("a", "first"),
        ("b", "two" + end.decode() + "lines"),
    ]
    jsonl = b"\xef\xbb\xbf" + end.join([b'{"text": "one"}', b'{"text": "two"}', b""])
    assert reasons(read(jsonl, "jsonl")) == ["ok", "ok"]


def test_nul_surrogates_deep_nesting_and_infinities_are_rejected_with_the_reason() -> None:
    data = b"\n".join(
        [
            b'{"text": "a\\u0000b"}',
            b'{"text": "ok", "id": "x\\u0000"}',
            b'{"text": "\\ud83d alone"}',
            b'{"text": "ok", "source": "\\udfff"}',
            b'{"text": "ok", "deep": ' + b"[" * 2000 + b"]" * 2000 + b"}",
            b'{"text": "ok", "deep": ' + b"[" * 40 + b"]" * 40 + b"}",
            b'{"text": "ok", "price": 1e999}',
            b"[" * 5000,
        ]
    )
    records = read(data, "jsonl", limit=64 * 1024)
    assert reasons(records) == [
        "the text holds a NUL byte",
        "the id holds a NUL byte",
        "the text holds a lone surrogate ('\\ud83d')",
        "a field holds a lone surrogate ('\\udfff')",
        "JSON nested too deeply",
        "fields nested deeper than 16 levels",
        "a field is inf, not a finite number",
        "JSON nested too deeply",
    ]
    assert all("\x00" not in r.id + r.raw for r in records if isinstance(r, Rejected))
    assert all(r.raw.encode() for r in records if isinstance(r, Rejected))  # storable: no lone surrogates
    assert read(b"text,id\nfine,a\x00b\nnul \x00 here,c\n", "csv") == [
        Rejected("run-1", "the id holds a NUL byte", "a\\x00b"),  # the fallback id
        Rejected("c", "the text holds a NUL byte", "nul \\x00 here,c\n"),
    ]


def test_a_field_over_the_csv_limit_and_an_endless_line_are_one_rejection_each() -> None:
    big = 200_000  # over the csv module's default field limit (131072)
    records = read(b"text\n" + b'"' + b"x" * big + b'"\nnext\n', "csv", limit=big)
    assert reasons(records) == [
        "malformed CSV (a field over the CSV reader's limit, or broken quoting)",
        "ok",
    ]
    endless = [b"text\n", *[b"y" * 65536] * 64, b"\nafter\n"]  # 4 MiB in one line, arriving in chunks
    records = list(read_items(endless, "csv", "run", 64))
    assert reasons(records) == ["a line over 1280 bytes, far over the 64-byte item limit", "ok"]


def test_a_header_that_cannot_be_read_is_one_clear_error() -> None:
    with pytest.raises(InvalidInput, match="header cannot be read: not UTF-8"):
        read(b"\xfftext\nx\n", "csv")
