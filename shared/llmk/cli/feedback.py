"""`llmk feedback add`: analysts' labels go to the optimizer, which turns them into served versions.

Labels feed the model's standing feedback job (one per model and branch, created on first use with the
model's own task, so what it learns is what the workers serve). The optimizer trains on each batch of
examples, commits a sparse version through its validation gate, and workers following the branch
hot-apply it. The first file's first rows (`--holdout`) become the gate's held-out set. A file of rated
replies (a `rating` column, or JSON lines) feeds the model's standing replies job instead (no task needed).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from llmk.cli.context import Json
from llmk.cli.output import console, emit
from llmk.errors import InvalidInput, NotFound, Unavailable

if TYPE_CHECKING:
    from llmk.domain.task_spec import TaskSpec
    from services.optimizer.interface import Example, Job, JobsClient, JobSpec
    from services.support.usecases.learning import ReplyJobs

BATCH = 16  # examples per optimizer step (JobSpec's default batch size)
app = typer.Typer(help="Labelled feedback for a served model.", no_args_is_help=True)


@app.command()
def add(
    model: Annotated[str, typer.Option("--model", "-m", help="Model whose served branch learns")],
    file: Annotated[
        Path,
        typer.Option(
            help="CSV with text,label (a numeric label indexes the task's labels); or rated replies: CSV "
            "with prompt,reply,rating[,correction] or JSON lines with messages, reply, rating[, correction]"
        ),
    ],
    branch: Annotated[str, typer.Option(help="Serving branch the versions go to")] = "main",
    holdout: Annotated[
        int,
        typer.Option(
            help="Rows of the first file kept for the validation gate (a new job). The optimizer then steps "
            f"on each {BATCH} rows and commits a version every --commit-every steps: with the defaults, a "
            f"first file needs 48 + {4 * BATCH} = {48 + 4 * BATCH} rows for a first version"
        ),
    ] = 48,
    lr: Annotated[float, typer.Option(help="Learning rate (for a new job)")] = 1e-4,
    topk: Annotated[float, typer.Option(help="Fraction of each tensor's update committed (new job)")] = 0.05,
    commit_every: Annotated[int, typer.Option(help="Optimizer steps per version (new job)")] = 4,
    rank: Annotated[
        int, typer.Option(help="Rank of each matrix's update per version; 0: --topk entries (new job)")
    ] = 0,
    local_steps: Annotated[
        bool,
        typer.Option(
            help="The job trains ahead of the served version, each step where the last left it (new job; "
            "pair with --rank)"
        ),
    ] = False,
    replay: Annotated[int, typer.Option(help="Earlier examples rehearsed in each step (new job)")] = 0,
    tolerance: Annotated[
        float, typer.Option(help="How much worse a version's held-out metric may be and still serve")
    ] = 0.03,
    trainable: Annotated[
        list[str] | None, typer.Option(help="Tensor patterns to train (new job; default: last layers' MLPs)")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Examples per optimizer step (new job)")] = 16,
    wait: Annotated[
        bool,
        typer.Option(help="Wait until the optimizer has trained on them (always in the embedded mode)"),
    ] = False,
    json_: Json = False,
) -> None:
    """Queue labelled examples for the optimizer; prints the job and, with --wait, the versions it made."""
    from llmk.cli.context import deployment, history
    from llmk.cli.train import read_examples
    from llmk.domain.task_spec import require_task
    from services.optimizer.usecases.examples import check_examples
    from services.support.usecases.learning import ReplyJobs, is_reply_file

    if holdout < 0:
        raise InvalidInput(f"--holdout must be 0 or more, got {holdout}")
    if not file.is_file():
        raise NotFound(f"no such file: {file}")
    if is_reply_file(file):
        setup = ReplyJobs(branch, batch_size, lr, topk, commit_every, tolerance, tuple(trainable or ()))
        add_replies(model, file, setup, holdout, wait, json_)
        return
    tiers = deployment()
    embedded = tiers.trains_in_process
    with history() as h:  # the task alone: metadata, no tensors
        task = require_task(h, model, branch)
    examples = read_examples(file, task)
    check_examples(task, examples, tiers.settings.optimizer_max_examples)  # the whole file, before any job
    spec = job_spec(model, branch, task, lr, topk, commit_every, trainable, tolerance, rank, local_steps)
    spec = replace(spec, batch_size=batch_size, replay=replay)
    with tiers.jobs(worker=embedded) as jobs:
        job, examples = standing_job(jobs, spec, examples, holdout)
        key = hashlib.sha256(job.id.encode() + file.read_bytes()).hexdigest()
        submitted = jobs.submit_feedback(job.id, examples, key)
        waited = wait or embedded  # an embedded worker lives only as long as this command
        job = wait_for_training(jobs, job.id, quiet=json_) if waited else jobs.get_job(job.id)
    emit(json_, _summary(job, len(examples), submitted.duplicate))


def add_replies(model: str, file: Path, setup: ReplyJobs, holdout: int, wait: bool, json_: bool) -> None:
    """Rated replies to the model's standing replies job; the whole file is checked before any is queued."""
    from llmk.cli.context import deployment
    from services.optimizer.usecases.replies import check_replies
    from services.support.usecases.learning import read_reply_file

    tiers = deployment()
    examples = read_reply_file(file)
    check_replies(examples, tiers.settings.optimizer_max_examples)
    with tiers.jobs(worker=tiers.trains_in_process) as jobs:
        existing = [j for j in jobs.list_jobs(model) if setup.is_standing(j)]
        if not existing:
            if len(examples) <= holdout:
                raise InvalidInput(f"{len(examples)} examples: a new job needs more than --holdout {holdout}")
            if not any(e.rating == "up" for e in examples[:holdout]):
                raise InvalidInput(
                    f"the first {holdout} rated replies hold no up-rated one to gate versions on"
                )
        validation, examples = ([], examples) if existing else (examples[:holdout], examples[holdout:])
        job = existing[0] if existing else jobs.create_job(setup.spec(model), validation)
        key = hashlib.sha256(job.id.encode() + file.read_bytes()).hexdigest()
        submitted = jobs.submit_feedback(job.id, examples, key)
        waited = wait or tiers.trains_in_process
        job = wait_for_training(jobs, job.id, quiet=json_) if waited else jobs.get_job(job.id)
    emit(json_, _summary(job, len(examples), submitted.duplicate))


def _summary(job: Job, examples: int, duplicate: bool) -> dict[str, object]:
    return {
        "job": job.id,
        "examples": examples,
        "duplicate": duplicate,
        "status": job.status,
        "step": job.step,
        "versions": [c.version for c in job.commits],
        "head_version": job.head_version,
        "metric": job.metric,
        "until_next_version": until_next_version(job),
    }


def until_next_version(job: Job) -> str:
    """What the job still needs before it commits again, in words (labels wait until a batch fills)."""
    s = job.spec
    due = (job.step // s.commit_every + 1) * s.commit_every * s.batch_size
    missing = due - job.items
    if missing <= 0:
        return "enough examples: training"
    return (
        f"{missing} more examples: the job steps on each {s.batch_size} and commits a version every "
        f"{s.commit_every} steps ({job.items} received)"
    )


def job_spec(
    model: str,
    branch: str,
    task: TaskSpec,
    lr: float,
    topk: float,
    commit_every: int,
    trainable: list[str] | None,
    tolerance: float = 0.01,
    rank: int = 0,
    local_steps: bool = False,
    replay: int = 0,
) -> JobSpec:
    """A standing feedback job: AdamW, runs until cancelled, steps as labels arrive."""
    from llmk.domain.optim import OptimizerKind, OptimizerSpec
    from services.optimizer.interface import FEEDBACK, JobSpec

    return JobSpec(
        model=model,
        kind=FEEDBACK,
        branch=branch,
        trainable=tuple(trainable or ()),
        optimizer=OptimizerSpec(kind=cast(OptimizerKind, "adamw"), lr=lr),
        commit_every=commit_every,
        steps=None,
        topk=topk,
        rank=rank,
        task=task,
        tolerance=tolerance,
        local_steps=local_steps,
        replay=replay,
        author="llmk feedback",
    )


def standing_job(
    jobs: JobsClient, spec: JobSpec, examples: list[Example], holdout: int
) -> tuple[Job, list[Example]]:
    """The model's open feedback job on the branch, or a new one whose gate holds out the first rows."""
    for job in jobs.list_jobs(spec.model):
        s = job.spec
        if not job.done and s.kind == spec.kind and s.steps is None and s.branch == spec.branch:
            if s.task != spec.task:
                raise InvalidInput(
                    f"job {job.id} trains another task than the model's; cancel it (`llmk jobs {job.id} "
                    "--cancel`) and add the feedback again"
                )
            return job, examples
    if len(examples) <= holdout:
        needed = holdout + spec.batch_size * spec.commit_every
        raise InvalidInput(
            f"{len(examples)} examples: a new job holds out the first --holdout {holdout} for its validation "
            f"gate and trains on the rest, {spec.batch_size} per step, a version every --commit-every "
            f"{spec.commit_every} steps: send at least {needed} rows for a first version, or lower --holdout"
        )
    validation, rest = examples[:holdout], examples[holdout:]
    return jobs.create_job(spec, validation), rest


def wait_for_training(jobs: JobsClient, job_id: str, quiet: bool, timeout: float = 3600.0) -> Job:
    """Until every full batch submitted so far has been trained on (and committed where due)."""
    deadline, shown = time.monotonic() + timeout, 0
    while True:
        job = jobs.get_job(job_id)
        for c in job.commits[shown:]:
            if not quiet:
                state = "serving" if c.promoted else f"held back ({c.reason})"
                console.print(f"step {c.step}: version {c.version} {state}, held-out metric {c.metric:.3f}")
        shown = len(job.commits)
        if job.done or job.step >= job.items // job.spec.batch_size:
            return job
        if time.monotonic() > deadline:
            raise Unavailable(f"job {job_id} is still at step {job.step} after {timeout:.0f} s")
        time.sleep(0.5)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="feedback")
