"""Tables for people: piped to a file or another program, a row is printed whole, not cut at 80 columns."""

from __future__ import annotations

import pytest

from llmk.cli.output import emit


def test_a_table_in_a_pipe_is_not_cut_at_80_columns(capsys: pytest.CaptureFixture[str]) -> None:
    text = "$ACME " + "long headline " * 12
    emit(False, [{"id": "item-1", "scored_at": "2026-12-01T09:30:00+00:00", "version": 12, "text": text}])
    out = capsys.readouterr().out
    assert "2026-12-01T09:30:00+00:00" in out
    assert "version" in out
    assert text.strip() in out
