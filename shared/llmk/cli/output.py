"""Printing results: JSON for scripts (--json), a table for people."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
PIPE_WIDTH = 100_000


def plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def emit(as_json: bool, data: Any, rows: list[dict[str, Any]] | None = None, title: str = "") -> None:
    """Print `data` as JSON, or `rows` (default: data) as a table."""
    if as_json:
        print(json.dumps(plain(data), indent=2, default=str))
        return
    rows = plain(rows if rows is not None else data)
    if isinstance(rows, dict):
        rows = [rows]
    if not rows:
        console.print(f"{title}: nothing" if title else "nothing")
        return
    table = Table(title=title or None)
    for col in rows[0]:
        table.add_column(str(col))
    for r in rows:
        table.add_row(*(_cell(v) for v in r.values()))
    # a terminal: its own width; a pipe or a file: the table's natural width, never cut at 80 columns
    Console(width=None if sys.stdout.isatty() else PIPE_WIDTH).print(table)


@contextmanager
def stage(text: str) -> Iterator[None]:
    """A spinner saying what a long step is doing, on standard error when it is a terminal; nothing when
    it is not, so logs and scripts that read the output see only the result."""
    if not sys.stderr.isatty():
        yield
        return
    with Console(stderr=True).status(text):
        yield


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict | list):
        return json.dumps(v)[:80]
    return str(v)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)
