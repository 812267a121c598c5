"""Fuzz target for feedback files: any bytes give examples the task can take, or one InvalidInput naming
the file; never another exception, and never a lost row. `make fuzz` runs it long (LLMK_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs_support import TASK

from llmk.cli.train import read_examples
from llmk.errors import InvalidInput
from services.optimizer.usecases.examples import check_examples

FUZZ = settings(
    max_examples=int(os.environ.get("LLMK_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PIECES = [b"yes", b"no", b"1", b"text", b",", b'"', b"\n", b"\r", b"\x00", b"\xef\xbb\xbf", b"\xff", b"\xc3"]
LINE_END = re.compile(rb"\r\n|\r|\n")


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "feedback.csv"


@FUZZ
@given(rows=st.binary(max_size=200) | st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join))
def test_a_feedback_file(scratch: Path, rows: bytes) -> None:
    scratch.write_bytes(b"text,label\n" + rows)
    try:
        examples = read_examples(scratch, TASK)
        check_examples(TASK, examples, 10_000)
    except InvalidInput as e:
        error = str(e)
    else:
        error = ""
    if error:
        assert "\n" not in error
        return
    for example in examples:
        assert example.label in TASK.labels
        assert "\x00" not in example.text
    if b'"' not in rows:  # no quoted field joins lines: one example per non-empty line
        assert len(examples) == len([line for line in LINE_END.split(rows) if line])
