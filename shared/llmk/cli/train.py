"""`llmk train` and `llmk jobs`: fine-tune a stored model from a labelled CSV file; look at optimizer jobs.

With LLMK_OPTIMIZER_ADDRESS set the commands talk to the optimizer service; otherwise the optimizer tier
runs inside the command (its use cases plus a worker thread). The composition root's factory
(context.tiers().jobs) chooses.
"""

from __future__ import annotations

import csv
import hashlib
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from llmk.cli.context import Json, deployment
from llmk.cli.output import console, emit
from llmk.config import Settings
from llmk.errors import InvalidInput, LlmkError, NotFound, Unavailable

if TYPE_CHECKING:  # torch comes with these: imported by the commands, not by `llmk --help`
    from llmk.domain.task_spec import TaskSpec
    from services.optimizer.interface import Example, Job, JobsClient


def train(
    model: Annotated[str, typer.Option("--model", "-m", help="Stored model to fine-tune")],
    data: Annotated[Path, typer.Option(help="CSV: text,label (classification) or prompt,completion")],
    task: Annotated[
        str,
        typer.Option(
            help="model (its stored task: what classify serves), sentiment, classification or completion"
        ),
    ] = "model",
    labels: Annotated[
        list[str] | None, typer.Option(help="Label set, in order (numeric labels index it)")
    ] = None,
    trainable: Annotated[list[str] | None, typer.Option(help="Tensor patterns to train (repeatable)")] = None,
    optimizer_kind: Annotated[str, typer.Option("--optimizer", help="sgd, adam or adamw")] = "adamw",
    lr: Annotated[float, typer.Option(help="Learning rate")] = 1e-4,
    topk: Annotated[float, typer.Option(help="Fraction of each tensor's update committed")] = 0.01,
    steps: Annotated[int, typer.Option(help="Optimizer steps")] = 20,
    batch_size: Annotated[int, typer.Option(help="Examples per step")] = 16,
    commit_every: Annotated[int, typer.Option(help="Steps per committed version")] = 1,
    valid: Annotated[Path | None, typer.Option(help="Held-out CSV for the validation gate")] = None,
    holdout: Annotated[int, typer.Option(help="Examples of --data held out when --valid is not given")] = 64,
    tolerance: Annotated[
        float, typer.Option(help="How much worse a version may score and still serve")
    ] = 0.01,
    branch: Annotated[str, typer.Option(help="Serving branch")] = "main",
    seed: Annotated[int, typer.Option(help="Shuffle seed for the data")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the job")] = 3600.0,
    json_: Json = False,
) -> None:
    """Fine-tune from labelled examples; prints each committed version with its held-out metric."""
    from llmk.domain.optim import OptimizerKind, OptimizerSpec
    from services.optimizer.interface import COMPLETED, JobSpec
    from services.optimizer.usecases.examples import encode

    if task == "model":
        spec_task = _stored_task(model, branch) if not labels else _task("sentiment", labels)
    else:
        spec_task = _task(task, labels)
    examples = read_examples(data, spec_task)
    random.Random(seed).shuffle(examples)
    held_out = read_examples(valid, spec_task) if valid else examples[:holdout]
    training = examples if valid else examples[holdout:]
    spec = JobSpec(
        model=model,
        kind="feedback",
        branch=branch,
        trainable=tuple(trainable or ()),
        optimizer=OptimizerSpec(kind=cast(OptimizerKind, optimizer_kind), lr=lr),
        batch_size=batch_size,
        commit_every=commit_every,
        steps=steps,
        topk=topk,
        task=spec_task,
        tolerance=tolerance,
        author="llmk train",
    )
    settings = Settings()
    with deployment(settings).jobs() as jobs:
        job = jobs.create_job(spec, held_out)
        key = hashlib.sha256(job.id.encode() + encode(training)).hexdigest()
        jobs.submit_feedback(job.id, training, key)
        job = _wait(jobs, job.id, timeout, quiet=json_)
    _print_job(job, json_)
    if job.status != COMPLETED:
        raise LlmkError(f"job {job.id} {job.status}: {job.error}")


def jobs(
    job_id: Annotated[str | None, typer.Argument(help="A job id; omit to list jobs")] = None,
    model: Annotated[str | None, typer.Option(help="Only jobs of this model")] = None,
    cancel: Annotated[bool, typer.Option(help="Cancel the job after its current step")] = False,
    json_: Json = False,
) -> None:
    """List optimizer jobs, or show one with the versions it committed."""
    with deployment(Settings()).jobs(worker=False) as client:
        if job_id is None:
            listed = client.list_jobs(model)
            emit(json_, listed, [_summary(j) for j in listed], title="optimizer jobs")
            return
        job = client.cancel_job(job_id) if cancel else client.get_job(job_id)
    _print_job(job, json_)


def _stored_task(model: str, branch: str) -> TaskSpec:
    """The model's own task, so training learns exactly what is served; sentiment if it has none."""
    from llmk.cli.context import store_session
    from llmk.domain.task_spec import TASKS, task_of

    with store_session() as c:
        return task_of(c.store, model, branch) or TASKS["sentiment"]


def _task(name: str, labels: list[str] | None) -> TaskSpec:
    from llmk.domain.task_spec import CLASSIFICATION, TASKS, TaskSpec

    chosen = tuple(x.strip() for label in labels or () for x in label.split(",") if x.strip())
    if name == "completion":
        return TASKS["completion"]
    if name == "sentiment":
        return replace(TASKS["sentiment"], labels=chosen or TASKS["sentiment"].labels)
    if name == CLASSIFICATION:
        if not chosen:
            raise InvalidInput("--task classification needs --labels")
        return TaskSpec(CLASSIFICATION, chosen)
    raise InvalidInput(f"unknown task {name!r}; choose model, sentiment, classification or completion")


def read_examples(path: Path, task: TaskSpec) -> list[Example]:
    """Rows of a CSV file as examples; a numeric label picks that position of the task's label set."""
    from llmk.domain.task_spec import CLASSIFICATION
    from services.optimizer.interface import Example

    columns = ("text", "label") if task.kind == CLASSIFICATION else ("prompt", "completion")
    rows = _csv_rows(path, columns)
    if task.kind != CLASSIFICATION:
        return [Example(prompt=r["prompt"], completion=r["completion"]) for r in rows]
    return [Example(text=r["text"], label=_label(r["label"].strip(), task.labels)) for r in rows]


def _csv_rows(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The file's rows, each with every one of `columns`; one clear error for any unreadable file."""
    if not path.is_file():
        raise NotFound(f"no such file: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:  # a byte order mark is skipped
        reader = csv.DictReader(f)
        try:
            rows = list(reader)
        except UnicodeDecodeError as e:
            raise InvalidInput(f"{path}: not UTF-8 ({e.reason}) after line {reader.line_num}") from None
        except csv.Error as e:
            raise InvalidInput(f"{path}: line {reader.line_num}: {e}") from None
    if rows and not set(columns) <= set(reader.fieldnames or ()):
        found = ",".join(reader.fieldnames or ()).encode("unicode_escape").decode()[:200]
        raise InvalidInput(f"{path}: expected columns {','.join(columns)}, found {found}")
    for n, row in enumerate(rows, start=1):
        if (missing := [c for c in columns if row[c] is None]) or None in row:
            what = f"no {missing[0]}" if missing else "more fields than the header"
            raise InvalidInput(f"{path}: row {n} has {what}")
    return rows


def _label(raw: str, labels: tuple[str, ...]) -> str:
    if raw not in labels and raw.isdigit() and int(raw) < len(labels):
        return labels[int(raw)]
    return raw  # a label outside the set is refused by the job, which says so


def _wait(client: JobsClient, job_id: str, timeout: float, quiet: bool) -> Job:
    deadline, shown = time.monotonic() + timeout, 0
    while True:
        job = client.get_job(job_id)
        for c in job.commits[shown:]:
            if not quiet:
                console.print(f"step {c.step}: version {c.version} on {c.branch} metric {_fmt(c.metric)}")
        shown = len(job.commits)
        if job.done:
            return job
        if time.monotonic() > deadline:
            raise Unavailable(f"job {job_id} still {job.status} at step {job.step} after {timeout:.0f} s")
        time.sleep(0.5)


def _print_job(job: Job, as_json: bool) -> None:
    rows = [
        {
            "step": c.step,
            "version": c.version,
            "branch": c.branch,
            "promoted": c.promoted,
            "metric": c.metric,
            "parent metric": c.parent_metric,
            "loss before": c.loss_before,
            "loss after": c.loss_after,
            "nnz": c.nnz,
            "note": c.reason,
        }
        for c in job.commits
    ]
    emit(as_json, job, rows, title=f"job {job.id}: {job.status} {job.error}".strip())
    if not as_json:
        console.print(
            f"held-out metric: {_fmt(job.baseline)} at the start, {_fmt(job.metric)} now "
            f"(serving version {job.head_version})"
        )


def _summary(job: Job) -> dict[str, Any]:
    return {
        "job": job.id,
        "model": job.spec.model,
        "kind": job.spec.kind,
        "status": job.status,
        "step": f"{job.step}/{job.spec.steps or '-'}",
        "version": job.head_version,
        "metric": job.metric,
        "error": job.error,
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def register(app: typer.Typer) -> None:
    app.command()(train)
    app.command("jobs")(jobs)
