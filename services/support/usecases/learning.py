"""Thumbs and corrections become training: each rated reply goes to the model's standing replies job.

A model has one open replies job per serving branch (created on first use, whoever comes first: the
gateway's POST /v1/feedback or `llmk feedback add`). A thumb rates the reply it is on; a correction is also
a thumbs-up of the corrected reply. Files of rated replies are read and checked whole before anything is
queued, so a bad row leaves the job as it was.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmk.domain.optim import OptimizerSpec
from llmk.errors import InvalidInput
from services.optimizer.interface import DOWN, REPLIES, UP, Example, Job, JobsClient, JobSpec, reply_example
from services.support.interface import Completion, Feedback

HELD_OUT = Path(__file__).parents[1] / "data" / "bitext-heldout.csv"
CSV_COLUMNS = ("prompt", "reply", "rating")


def rated(turns: Sequence[tuple[str, str]], reply: str, rating: str, correction: str = "") -> list[Example]:
    """The examples one rated reply gives: itself with its rating, and its correction (if any) up-rated."""
    out = [reply_example(turns, reply, rating)] if reply.strip() else []
    return out + ([reply_example(turns, correction, UP)] if correction.strip() else [])


def from_feedback(completion: Completion, feedback: Feedback) -> list[Example]:
    turns = [(t.role, t.content) for t in completion.messages]
    return rated(turns, completion.reply, feedback.rating, feedback.correction)


def is_reply_file(path: Path) -> bool:
    """JSON lines, or a CSV whose header has a rating column (text,label files are labels, not replies)."""
    if path.suffix in (".jsonl", ".json"):
        return True
    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return "rating" in header


def read_reply_file(path: Path) -> list[Example]:
    """Every row of a rated-replies file as examples; InvalidInput names the first bad row."""
    text = path.read_text(encoding="utf-8")
    rows = _json_rows(text) if path.suffix in (".jsonl", ".json") else _csv_rows(text)
    if not rows:
        raise InvalidInput(f"{path}: no rated replies in the file")
    out: list[Example] = []
    for number, (turns, reply, rating, correction) in rows:
        if rating not in (UP, DOWN):
            raise InvalidInput(f"{path} row {number}: rating must be 'up' or 'down', got {rating!r}")
        if not reply.strip() and not correction.strip():
            raise InvalidInput(f"{path} row {number}: the reply is empty")
        if not turns or turns[-1][0] != "user" or any(not c.strip() for _, c in turns):
            raise InvalidInput(f"{path} row {number}: the conversation must end with a non-empty user turn")
        out += rated(turns, reply, rating, correction)
    return out


Rated = tuple[list[tuple[str, str]], str, str, str]  # turns, reply, rating, correction


def _csv_rows(text: str) -> list[tuple[int, Rated]]:
    reader = csv.DictReader(io.StringIO(text))
    if not set(CSV_COLUMNS) <= set(reader.fieldnames or ()):
        raise InvalidInput(
            f"expected columns {','.join(CSV_COLUMNS)}[,correction], found {reader.fieldnames}"
        )
    out: list[tuple[int, Rated]] = []
    for i, r in enumerate(reader, start=2):
        turns = [("user", r["prompt"] or "")]
        out.append((i, (turns, r["reply"] or "", (r["rating"] or "").strip(), r.get("correction") or "")))
    return out


def _json_rows(text: str) -> list[tuple[int, Rated]]:
    out: list[tuple[int, Rated]] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
            turns = [(str(m["role"]), str(m["content"])) for m in row["messages"]]
            reply, rating = str(row.get("reply", "")), str(row["rating"])
            correction = str(row.get("correction") or "")
        except (ValueError, KeyError, TypeError):
            raise InvalidInput(
                f"line {i}: expected a JSON object with messages ([{{role, content}}]), reply, rating"
                "[, correction]"
            ) from None
        out.append((i, (turns, reply, rating, correction)))
    return out


def held_out(rows: int) -> list[Example]:
    """The first `rows` packaged Bitext held-out conversations, their reference replies up-rated."""
    with HELD_OUT.open(newline="", encoding="utf-8") as f:
        found = list(csv.DictReader(f))[:rows]
    return [reply_example([("user", r["instruction"])], r["response"], UP) for r in found]


@dataclass(frozen=True)
class ReplyJobs:
    """How a model's standing replies job is made: its branch, batch and optimizer settings."""

    branch: str = "main"
    batch_size: int = 16
    lr: float = 1e-4
    topk: float = 0.05
    commit_every: int = 1
    tolerance: float = 0.03
    trainable: tuple[str, ...] = ()
    rank: int = 0  # > 0: each matrix's update as a rank-`rank` delta (top-k entries otherwise)
    local_steps: bool = False  # the job trains ahead of the served version

    def spec(self, model: str) -> JobSpec:
        return JobSpec(
            model=model,
            kind=REPLIES,
            branch=self.branch,
            trainable=self.trainable,
            optimizer=OptimizerSpec(kind="adamw", lr=self.lr),
            batch_size=self.batch_size,
            commit_every=self.commit_every,
            steps=None,
            topk=self.topk,
            rank=self.rank,
            local_steps=self.local_steps,
            tolerance=self.tolerance,
            author="llmk feedback",
        )

    def is_standing(self, job: Job) -> bool:
        s = job.spec
        return not job.done and s.kind == REPLIES and s.steps is None and s.branch == self.branch

    def standing(self, jobs: JobsClient, model: str, validation: Sequence[Example]) -> Job:
        """The model's open replies job on the branch, or a new one gated on `validation`."""
        for job in jobs.list_jobs(model):
            if self.is_standing(job):
                return job
        return jobs.create_job(self.spec(model), validation)


class ReplyLearner:
    """Sends rated replies of one model to its standing replies job (made on first use)."""

    def __init__(self, jobs: JobsClient, model: str, setup: ReplyJobs, holdout: int):
        self.jobs, self.model, self.setup = jobs, model, setup
        self.validation = held_out(holdout)

    def learn(self, examples: Sequence[Example], key: str) -> Job:
        """Queue `examples` once per `key` (a repeated key is answered with the first submission)."""
        job = self.setup.standing(self.jobs, self.model, self.validation)
        return self.jobs.submit_feedback(job.id, examples, key).job
