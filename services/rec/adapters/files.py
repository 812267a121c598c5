"""Ratings and item files on disk, the shipped MovieLens data, and a time-ordered development split."""

from __future__ import annotations

import csv
import queue
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO, TypeVar

from llmk.errors import InvalidInput, NotFound
from services.rec.interface import Interaction, Rejection
from services.rec.usecases.records import guess_format, read_interactions

T = TypeVar("T")
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


def ticking(items: Iterable[T], seconds: float) -> Iterator[T | None]:
    """`items` as they come, read on a thread, with a None whenever `seconds` pass without one: a slow
    source (a pipe, a queue) then still lets a stream commit on time. Errors of the source are raised here."""
    inbox: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=10_000)

    def read() -> None:
        try:
            for item in items:
                inbox.put(("item", item))
            inbox.put(("end", None))
        except BaseException as e:  # handed to the consumer, which raises it
            inbox.put(("error", e))

    threading.Thread(target=read, name="llmk-rec-source", daemon=True).start()
    while True:
        try:
            kind, value = inbox.get(timeout=seconds)
        except queue.Empty:
            yield None
            continue
        if kind == "end":
            return
        if kind == "error":
            assert isinstance(value, BaseException)
            raise value
        yield value  # type: ignore[misc]


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


def item_texts(
    movies: Path, tags: Path | None = None, until: int | None = None, most: int = 5
) -> dict[int, str]:
    """movieId -> "Title (year). Genres: A, B. Tags: x, y": what the LLM reads for an item's content vector.

    Tags (tags.csv: userId,movieId,tag,timestamp) are the item's `most` most frequent ones; with `until`,
    only tags given by then, so an evaluation reads nothing from the period it replays."""
    found: dict[int, str] = {}
    try:
        with _open(movies) as f:
            for row in csv.DictReader(f):
                genres = row.get("genres", "").replace("|", ", ").replace("(no genres listed)", "")
                found[int(row["movieId"])] = row["title"] + (f". Genres: {genres}." if genres else ".")
        top = _top_tags(tags, until, most) if tags else {}
    except (KeyError, TypeError, ValueError) as e:  # a missing column or a non-integer id
        raise InvalidInput(f"{movies} or {tags}: expected MovieLens columns ({e!r})") from None
    for item, best in top.items():
        if item in found:
            found[item] += f" Tags: {', '.join(best)}."
    return found


def _top_tags(tags: Path, until: int | None, most: int) -> dict[int, list[str]]:
    counts: dict[int, dict[str, int]] = {}
    with _open(tags) as f:
        for row in csv.DictReader(f):
            if until is None or int(row["timestamp"]) <= until:
                per, tag = counts.setdefault(int(row["movieId"]), {}), row["tag"].strip().lower()
                per[tag] = per.get(tag, 0) + 1
    return {item: sorted(per, key=lambda t: (-per[t], t))[:most] for item, per in counts.items()}


def _open(path: Path) -> TextIO:
    if not path.is_file():
        raise NotFound(f"no such file: {path}")
    return path.open(encoding="utf-8", newline="")


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
