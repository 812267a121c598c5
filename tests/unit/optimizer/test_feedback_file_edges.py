"""Every unreadable feedback file is one clear InvalidInput naming the file and the problem, never a
traceback; a byte order mark and any line end are read; NUL and lone surrogates never reach a job."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobs_support import TASK

from llmk.cli.train import read_examples
from llmk.errors import InvalidInput
from services.optimizer.interface import Example
from services.optimizer.usecases.examples import check_examples


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"text,label\nfine,positive\n\xff\xfe,negative\n", "not UTF-8"),
        (b"text,label\nfine,positive\nno label here\n", "row 2 has no label"),
        (b"text,label\nfine,positive,extra\n", "row 1 has more fields than the header"),
        (b'text,label\n"' + b"x" * 200_000 + b'",positive\n', "field larger than field limit"),
        (b"headline,label\nfine,positive\n", "expected columns text,label, found headline,label"),
        (b"\x00text,label\nfine,positive\n", "found \\\\x00text,label"),
    ],
)
def test_an_unreadable_feedback_file_is_one_clear_error(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "feedback.csv"
    path.write_bytes(data)
    with pytest.raises(InvalidInput, match=why) as error:
        read_examples(path, TASK)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_a_byte_order_mark_and_any_line_end_are_read(tmp_path: Path, end: bytes) -> None:
    path = tmp_path / "feedback.csv"
    path.write_bytes(b"\xef\xbb\xbf" + end.join([b"text,label", b"up,positive", b'"two' + end + b'",0', b""]))
    assert read_examples(path, TASK) == [
        Example(text="up", label="positive"),
        Example(text="two" + end.decode(), label=TASK.labels[0]),
    ]


def test_nul_and_lone_surrogates_are_refused_before_any_job() -> None:
    label = TASK.labels[0]
    for example, why in [
        (Example(text="a\x00b", label=label), "example 1: the text holds a NUL byte"),
        (Example(text="fine", label=label + "\x00"), "example 1: the label holds a NUL byte"),
        (Example(text="\ud800", label=label), "example 1: the text holds a lone surrogate"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            check_examples(TASK, [Example(text="ok", label=label), example], 100)
