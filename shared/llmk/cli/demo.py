"""`llmk demo`: the finance sentiment monitor learning while it runs, with a report at the end.

Embedded (default): one process on SQLite, local files and the in-process broker, a fresh home under
--out. Distributed (--distributed): PostgreSQL and RabbitMQ from LLMK_DATABASE_URL and LLMK_BROKER_URL,
the store, --workers inference workers and the optimizer each in its own process.
"""

from __future__ import annotations

import csv
import logging
import random
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmk.bootstrap import embedded, reached_over_grpc
from llmk.cli.context import Json, deployment
from llmk.cli.output import console, emit
from llmk.config import Settings
from llmk.errors import InvalidInput, Unavailable

if TYPE_CHECKING:
    from llmk.bootstrap import Deployment
    from llmk.domain.task_spec import TaskSpec
    from services.monitor.interface import AlertRecord
    from services.monitor.usecases.demo_run import DemoRun, Plan
    from services.optimizer.interface import Example, Job

MODEL = "smol"
log = logging.getLogger("llmk.demo")


# How the demo's optimizer job trains (a standing feedback job, like `llmk feedback add` creates): the last
# four layers' MLPs, a version every 4 steps carrying a rank-8 low-rank delta per matrix, the job training
# ahead of the served version (local steps). Chosen on a development split of train.csv
# (bench/results/learning-notes.md): 0.600 macro-F1 at 0.81 MB per version, against 0.525 at 4.2 MB for
# top-5% sparse updates with every step taken at the served weights. The feedback is class-balanced:
# analysts label what matters, not the neutral two-thirds.
OPTIMIZER_LR, OPTIMIZER_TOPK, OPTIMIZER_RANK = 1e-4, 0.05, 8
OPTIMIZER: dict[str, Any] = {
    "lr": OPTIMIZER_LR,
    "topk": OPTIMIZER_TOPK,
    "rank": OPTIMIZER_RANK,
    "local_steps": True,
    "commit_every": 4,
    "tolerance": 0.03,  # macro-F1 on 96 gate rows moves by about that between equally good versions
    "trainable": "last 4 MLPs",
}


app = typer.Typer(
    help="Demonstrations that import SmolLM2 and report what the kernel learnt. Without a subcommand: "
    "the finance sentiment monitor (`llmk demo --out DIR`).",
    invoke_without_command=True,
)


@app.callback()
def demo(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option(help="Folder for the report, the charts and (embedded) the store")
    ] = Path("llmk-demo"),
    distributed: Annotated[
        bool,
        typer.Option(help="PostgreSQL + RabbitMQ (LLMK_DATABASE_URL, LLMK_BROKER_URL), a process per tier"),
    ] = False,
    workers: Annotated[int, typer.Option(help="Inference worker processes (--distributed)")] = 1,
    stream: Annotated[int, typer.Option(help="Tweets streamed through the monitor")] = 1000,
    feedback: Annotated[int, typer.Option(help="Labelled tweets sent as feedback while it streams")] = 960,
    held_out: Annotated[int, typer.Option(help="valid.csv rows each served version is scored on")] = 300,
    seed: Annotated[int, typer.Option(help="Seed for the samples")] = 0,
    lr: Annotated[float, typer.Option(help="The optimizer's learning rate")] = OPTIMIZER_LR,
    topk: Annotated[
        float, typer.Option(help="Fraction of each vector's update a version commits (matrices: --rank)")
    ] = OPTIMIZER_TOPK,
    rank: Annotated[
        int, typer.Option(help="Rank of each matrix's update in a version (0: top-k entries instead)")
    ] = OPTIMIZER_RANK,
    source: Annotated[
        str, typer.Option(help="Model to import: smollm2, or synthetic:llama-tiny for a quick dry run")
    ] = "smollm2",
    settle_seconds: Annotated[
        float, typer.Option(help="After the stream, how long to wait for the optimizer and the evaluation")
    ] = 600.0,
    dense_baseline: Annotated[
        bool, typer.Option(help="Also fine-tune the trainable tensors densely on the feedback (minutes)")
    ] = False,
    json_: Json = False,
) -> None:
    """Import SmolLM2, stream finance tweets through the monitor, send labels back, report what it learnt."""
    from llmk.domain.task_spec import packaged

    if ctx.invoked_subcommand is not None:  # `llmk demo rec ...`: the options above belong to the monitor
        return

    if workers < 1 or stream < 1 or feedback < 64 or held_out < 32 or rank < 0:
        raise InvalidInput(
            "need --workers >= 1, --stream >= 1, --feedback >= 64, --held-out >= 32 and --rank >= 0"
        )
    started = time.monotonic()
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file: name a folder for the report")
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(out, distributed)
    task = packaged("sentiment")
    plan = make_plan(task, stream, feedback, held_out, seed)
    branch = f"demo-{uuid.uuid4().hex[:8]}" if distributed else "main"  # zero-shot again on every run
    _say(f"importing {source} as {MODEL!r} (task: sentiment), serving branch {branch!r}", json_)
    _import(settings, source, branch)
    optimizer = {**OPTIMIZER, "lr": lr, "topk": topk, "rank": rank}
    with _tiers(settings, distributed, workers, branch, out) as tier_settings:
        result = _run(deployment(tier_settings), plan, branch, optimizer, json_, settle_seconds)
        _say("training the baselines on the same feedback rows", json_)
        result.baselines = _baselines(deployment(tier_settings), plan, result.job, dense_baseline)
    setup = {
        "mode": "distributed" if distributed else "embedded",
        "inference_workers": workers if distributed else 1,
        "stream_rows": stream,
        "feedback_rows": feedback,
        "gate_rows": GATE_ROWS,
        "feedback_sample": "class-balanced train.csv rows, disjoint from the stream",
        "held_out_rows": held_out,
        "seed": seed,
        "branch": branch,
        "optimizer": optimizer,
    }
    report = _write_report(out, result, setup, time.monotonic() - started)
    headline = [{"figure": k, "value": v} for k, v in _headline(report, out).items()]
    emit(json_, report, headline, title="llmk demo")
    if result.run.unsettled:  # the report is written, but the run did not finish its work
        raise Unavailable(
            f"the demo did not finish: {result.run.unsettled}; version {result.run.served_at_end} was "
            f"serving at the end (report in {out})"
        )


def make_plan(task: TaskSpec, stream: int, feedback: int, held_out: int, seed: int) -> Plan:
    """Disjoint stream and feedback rows from train.csv; a held-out sample of valid.csv."""
    from llmk.data import FINANCE_NEWS
    from services.monitor.usecases.demo_run import Plan
    from services.monitor.usecases.items import Item

    train = _rows(FINANCE_NEWS / "train.csv", task)
    valid = _rows(FINANCE_NEWS / "valid.csv", task)
    random.Random(seed).shuffle(train)
    random.Random(seed + 1).shuffle(valid)
    if stream + feedback + GATE_ROWS > len(train) or held_out > len(valid):
        raise InvalidInput(f"train.csv has {len(train)} rows and valid.csv {len(valid)}: ask for fewer")
    items = [Item(f"tweet-{i}", text, {"label": label}) for i, (text, label) in enumerate(train[:stream])]
    labelled = balanced(train[stream:], task.labels, GATE_ROWS + feedback)
    gate, rest = labelled[:GATE_ROWS], labelled[GATE_ROWS:]
    chunks = [rest[i : i + CHUNK] for i in range(0, len(rest), CHUNK)]
    send_at = [0.6 * i / max(1, len(chunks) - 1) for i in range(len(chunks))]
    return Plan(items, chunks, send_at, valid[:held_out], task.labels, gate)


def balanced(rows: list[tuple[str, str]], labels: tuple[str, ...], n: int) -> list[Example]:
    """`n` labelled rows taking each label in turn, as analysts label what matters rather than the
    two-thirds of the stream that is neutral (train.csv rows only; valid.csv stays held out)."""
    from services.optimizer.interface import Example

    by_label = {label: [Example(text=t, label=label) for t, lab in rows if lab == label] for label in labels}
    turns = [by_label[label][i] for i in range(n) for label in labels if i < len(by_label[label])]
    if len(turns) < n:
        raise InvalidInput(f"train.csv has too few rows of some label for {n} balanced feedback rows")
    return turns[:n]


GATE_ROWS = 96  # feedback rows the optimizer's validation gate holds out
CHUNK = 128  # feedback rows per submission


def _rows(path: Path, task: TaskSpec) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"], task.labels[int(r["label"])]) for r in csv.DictReader(f)]


def _settings(out: Path, distributed: bool) -> Settings:
    settings = Settings()
    if not distributed:
        home = out / "home"
        shutil.rmtree(home, ignore_errors=True)  # a fresh store: the report covers this run only
        return embedded(settings, home)
    tiers = deployment(settings)
    if not (tiers.database_is_shared and tiers.broker_is_amqp):
        raise InvalidInput(
            "--distributed needs LLMK_DATABASE_URL=postgresql+psycopg://... and LLMK_BROKER_URL=amqp://..."
        )
    return settings


def _import(settings: Settings, source: str, branch: str) -> None:
    from llmk.domain.task_spec import TASK_KEY, encode_task, packaged
    from llmk.domain.versions import CommitInfo
    from services.store.adapters.importers import load_source

    store = deployment(settings).store()
    try:
        if not any(m.name == MODEL for m in store.models()):
            imported = load_source(source, settings.max_header_bytes, settings.max_import_file_bytes)
            task = {TASK_KEY: encode_task(packaged("sentiment"))}
            info = CommitInfo(message=f"import {imported.source}", metadata=task)
            store.create_model(MODEL, imported.tensors, imported.config, imported.files, info)
        if branch != "main":
            store.branch(MODEL, branch, "1")
    finally:
        store.close()


@contextmanager
def _tiers(settings: Settings, distributed: bool, workers: int, branch: str, out: Path) -> Iterator[Settings]:
    """The settings this process reaches the tiers with; distributed: after starting their processes."""
    if not distributed:
        yield settings
        return
    from llmk.cli.processes import TierProcesses

    with TierProcesses(settings, out / "logs") as processes:
        store = processes.start("store")
        for i in range(workers):
            processes.start(
                "inference",
                f"inference-{i}",
                LLMK_SERVE_MODEL=f"{MODEL}@{branch}",
                LLMK_INFERENCE_WORKER="1",
                LLMK_STORE_ADDRESS=store,
            )
        optimizer = processes.start("optimizer", LLMK_STORE_ADDRESS=store)
        yield reached_over_grpc(settings, store=store, optimizer=optimizer)


@dataclass
class Result:
    run: DemoRun
    job: Job
    stored: dict[int, tuple[int, int]]
    alerts: list[AlertRecord]
    scored_twice: int
    baselines: dict[str, dict[str, float]] | None = None


def _run(
    tiers: Deployment,
    plan: Plan,
    branch: str,
    optimizer_spec: dict[str, Any],
    json_: bool,
    settle_seconds: float = 600.0,
) -> Result:
    from llmk.cli.feedback import job_spec
    from llmk.domain.task_spec import packaged
    from services.inference.queue.client import QueuedClassifier
    from services.monitor.usecases.alerts import AlertRules
    from services.monitor.usecases.demo_run import DemoRun
    from services.monitor.usecases.monitor import Monitor, MonitorConfig

    app = tiers.inference_queue()
    scoring = QueuedClassifier(app, MODEL)
    repo = tiers.monitor_repo()
    store = tiers.store()
    run_id = uuid.uuid4().hex[:12]
    with ExitStack() as stack:
        stack.callback(store.close)
        _say("starting the inference worker and the optimizer", json_)
        stack.enter_context(tiers.inference_workers(app, MODEL, branch))
        jobs = stack.enter_context(tiers.jobs(worker=not tiers.optimizer_is_remote))
        layers = int(store.model(MODEL).config.get("num_hidden_layers", 1))
        last_four = [f"model.layers.{i}.mlp" for i in range(max(0, layers - 4), layers)]
        spec = job_spec(MODEL, branch, packaged("sentiment"), **{**optimizer_spec, "trainable": last_four})
        job = jobs.create_job(spec, plan.gate)
        config = MonitorConfig(MODEL, AlertRules(window=300, threshold=0.6, min_mentions=3))
        monitor = Monitor(repo, scoring, config, run_id)
        dashboard = stack.enter_context(Dashboard(quiet=json_))
        run = DemoRun(
            plan, scoring, monitor, jobs, job.id, lambda: store.version(MODEL, branch).id, dashboard.update
        )
        try:
            run.run(settle_seconds)
        finally:  # the demo's job ends with it: a later optimizer must not resume it
            jobs.cancel_job(job.id)
        run.score_replaced(lambda version: _pinned(tiers, str(version)))
        stored = {s.version: (s.stored_bytes, s.full_bytes) for s in store.stats(MODEL)}
        scores = repo.scores(MODEL, None, None, run_id)
        twice = len(scores) - len({s.item_id for s in scores})
        return Result(run, jobs.get_job(job.id), stored, repo.alerts(MODEL, run_id), twice)


@contextmanager
def _pinned(tiers: Deployment, version: str) -> Iterator[_Pinned]:
    """Classify on one version of the demo's model (built in this process from the store when no
    inference address is set), closed after its pass."""
    client = tiers.inference(MODEL, version)
    try:
        yield _Pinned(client)
    finally:
        client.close()


@dataclass(frozen=True)
class _Pinned:
    client: Any

    def submit(self, texts: Any) -> _Answered:
        return _Answered(self.client.classify(list(texts)).encode())


@dataclass(frozen=True)
class _Answered:
    answer: dict[str, Any]

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        return self.answer

    def ready(self) -> bool:
        return True


def _baselines(tiers: Deployment, plan: Plan, job: Job, dense: bool) -> dict[str, dict[str, float]]:
    """What a user could do instead with exactly the rows the demo sent (gate and feedback), scored on the
    same held-out rows: a bag of words, a probe on the imported model, and (asked for) a dense fine-tune."""
    from llmk.domain.task_spec import packaged
    from services.optimizer.interface import Example
    from services.optimizer.usecases import baselines
    from services.optimizer.usecases.feedback import load_trainer

    task = packaged("sentiment")
    train = plan.gate + [e for chunk in plan.feedback for e in chunk]
    held = [Example(text=t, label=label) for t, label in plan.held_out]
    store = tiers.store()
    try:
        trainer = load_trainer(store, MODEL, "1", task, sorted(job.tensors))
    finally:
        store.close()
    out = {
        "tfidf_lr": baselines.tfidf_lr(train, held, task.labels).as_dict(),
        "linear_probe": baselines.linear_probe(trainer, train, held).as_dict(),
    }
    if dense:
        out["dense"] = baselines.dense(trainer, train, held, lr=job.spec.optimizer.lr).as_dict()
    return out


def _write_report(out: Path, result: Result, setup: dict[str, Any], wall: float) -> dict[str, Any]:
    from services.monitor.adapters.charts import draw
    from services.monitor.usecases.report import build, write

    run = result.run
    summary = run.monitor.summary
    report = build(
        run.timeline,
        summary,
        result.job,
        result.stored,
        result.alerts,
        setup,
        wall,
        result.scored_twice,
        result.baselines,
    )
    report |= {"served_at_end": run.served_at_end, "unsettled": run.unsettled or None}
    write(out, report)
    draw(out, report, run.timeline.throughput)
    return report


def _headline(report: dict[str, Any], out: Path) -> dict[str, Any]:
    keys = ["zero_shot_macro_f1", "final_macro_f1", "macro_f1_gain", "in", "scored", "rejected"]
    keys += ["scored_twice", "wall_seconds", "served_at_end", "unsettled"]
    shown = {k: report[k] for k in keys}
    return {**shown, "versions": len(report["versions"]), "alerts": len(report["alerts"]), "report": str(out)}


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        console.print(f"[bold]llmk demo[/bold]: {text}", highlight=False)


class Dashboard:
    """Live progress: a panel on a terminal, else a line every 15 s (a long silence looks like a hang)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.live: Any = None
        self.last = 0.0

    def __enter__(self) -> Dashboard:
        if not self.quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=2)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, run: DemoRun) -> None:
        if self.quiet:
            return
        text = self._text(run)
        if self.live is not None:
            self.live.update(text)
        elif time.monotonic() - self.last >= 15:
            self.last = time.monotonic()
            print(text.replace("\n", " | "), file=sys.stderr, flush=True)

    def _text(self, run: DemoRun) -> str:
        t, s = run.timeline, run.monitor.summary
        rate = s.scored / max(1e-9, t.now() - t.stream_started) if t.stream_started else 0.0
        latest = t.scores[max(t.scores)] if t.scores else None
        held = (
            f"version {latest.version}: macro-F1 {latest.macro_f1:.3f}, accuracy {latest.accuracy:.3f}"
            if latest
            else "-"
        )
        zero = f"{t.zero_shot.macro_f1:.3f}" if t.zero_shot else "-"
        return (
            f"[{t.now():6.1f} s] {run.phase}\n"
            f"stream: {s.read}/{len(run.plan.stream)} read, {s.scored} scored, {s.rejected} rejected, "
            f"{rate:.1f} items/s, in flight {max(0, s.read - s.scored - s.rejected)}\n"
            f"serving version {s.version or (t.zero_shot.version if t.zero_shot else '-')}; "
            f"feedback sent {len(t.sent_at)}/{len(run.plan.feedback)} chunks; alerts {s.alerts}\n"
            f"held-out: zero-shot macro-F1 {zero}; latest {held}"
        )
