"""Ratings and item files on disk, the shipped MovieLens data, and a time-ordered development split."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from pathlib import Path

from llmk.errors import InvalidInput, NotFound
from services.rec.interface import Interaction, Rejection
from services.rec.usecases.records import guess_format, read_interactions

MOVIELENS = Path(__file__).resolve().parent.parent / "data" / "movielens-latest-small"


def source_lines(source: str) -> Iterator[str]:
    """Text lines of a file, or of standard input for '-'."""
    if source == "-":
        yield from sys.stdin
        return
    path = Path(source)
    if not path.is_file():
        raise NotFound(f"no such file: {source}")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{source} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def records(source: str, fmt: str = "") -> Iterator[Interaction | Rejection]:
    return read_interactions(source_lines(source), fmt or guess_format(source))


def ratings(path: Path) -> list[Interaction]:
    """Every rating of a file, in time order (stable); a file with a bad record is refused whole."""
    found: list[Interaction] = []
    for record in records(str(path)):
        if isinstance(record, Rejection):
            raise InvalidInput(f"{path}: record {record.record}: {record.reason}")
        found.append(record)
    return sorted(found, key=lambda r: r.timestamp)


def titles(path: Path) -> dict[int, str]:
    """movieId -> "title (genres)" from a MovieLens movies.csv (columns movieId, title, genres)."""
    if not path.is_file():
        raise NotFound(f"no such file: {path}")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if not {"movieId", "title"} <= set(reader.fieldnames or ()):
            raise InvalidInput(f"{path}: expected columns movieId,title[,genres], got {reader.fieldnames}")
        try:
            return {int(row["movieId"]): row["title"] for row in reader}
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"{path}: line {reader.line_num}: {e}") from None


def split(rows: list[Interaction], held_out: float) -> tuple[list[Interaction], list[Interaction]]:
    """The first (1 - held_out) of the ratings by time, and the rest."""
    if not 0 < held_out < 1:
        raise InvalidInput(f"the held-out fraction must be between 0 and 1, got {held_out}")
    cut = round(len(rows) * (1 - held_out))
    return rows[:cut], rows[cut:]


def write_ratings(rows: list[Interaction], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["userId", "movieId", "rating", "timestamp"])
        out.writerows((r.user, r.item, r.rating, r.timestamp) for r in rows)
