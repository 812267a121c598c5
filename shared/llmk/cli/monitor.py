"""`llmk monitor`, `llmk scores`, `llmk rejected`, `llmk alerts`: score a stream of finance news, watch
tickers' mood.

Items go through the inference queue: in the embedded mode (LLMK_BROKER_URL=memory://) the command runs
an inference worker on threads of its own process; with RabbitMQ, `llmk serve inference` workers consuming
the queue answer (start as many as you need).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from llmk.bootstrap import Deployment, is_queue_url
from llmk.cli.context import Json, deployment, history, split_ref
from llmk.cli.output import emit
from llmk.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from services.monitor.interface import Evidence
    from services.monitor.usecases.items import Item, Rejected
    from services.monitor.usecases.monitor import MonitorConfig, Summary


def register(app: typer.Typer) -> None:
    app.command()(monitor)
    app.command()(scores)
    app.command()(alerts)
    app.command()(rejected)


def monitor(
    model: Annotated[str, typer.Option("--model", "-m", help="NAME or NAME@BRANCH to serve and follow")],
    source: Annotated[
        str, typer.Option(help="A CSV or JSON-lines file, '-' for standard input, or amqp://... (a queue)")
    ],
    format_: Annotated[
        str, typer.Option("--format", help="csv or jsonl (default: from the file name; csv for stdin)")
    ] = "",
    queue: Annotated[str, typer.Option(help="The queue to read with an amqp:// source")] = "news",
    window: Annotated[int, typer.Option(help="Items in the sliding window tickers' mood is read over")] = 200,
    threshold: Annotated[
        float, typer.Option(help="Share of negative (or positive) mentions that alerts")
    ] = 0.6,
    min_mentions: Annotated[
        int, typer.Option(help="Mentions of a ticker in the window before it alerts")
    ] = 5,
    companies: Annotated[
        Path | None, typer.Option(help='JSON file mapping company names to tickers, e.g. {"Apple": "AAPL"}')
    ] = None,
    json_: Json = False,
) -> None:
    """Score every item of a stream, store it, and raise alerts when a ticker's mood turns.

    A file or standard input is read to its end, then a summary is printed; a queue runs until stopped.
    """
    from services.monitor.usecases.alerts import AlertRules
    from services.monitor.usecases.monitor import MonitorConfig

    name, ref = split_ref(model)
    try:
        rules = AlertRules(window, threshold, min_mentions)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    config = MonitorConfig(name, rules, _companies(companies))
    tiers = deployment()
    run = uuid.uuid4().hex[:12]
    with ExitStack() as stack:
        items = stack.enter_context(_source(tiers, source, format_, queue, run))
        app = tiers.inference_queue()
        workers = tiers.inference_workers(app, name, ref)
        summary = run_monitor(tiers, config, app, workers, items, run, progress=not json_)
    emit(json_, {**summary.as_dict(), "training": _training(name, summary.version)})


def _training(model: str, version: int | None) -> str:
    """Whether the version that answered was trained by feedback for its task (zero-shot answers warn)."""
    from llmk.domain.task_spec import training_note

    if version is None:
        return "no version answered"
    try:
        with history() as h:
            return training_note(h, model, str(version))
    except NotFound:
        return f"version {version} of {model!r} is not in the store"


def run_monitor(
    tiers: Deployment,
    config: MonitorConfig,
    app: Any,
    workers: AbstractContextManager[Any],
    items: Iterable[Item | Rejected | None],
    run: str,
    progress: bool = True,
) -> Summary:
    """Run the monitor over `items`, with `workers` answering on the inference queue of `app`."""
    from services.inference.queue.client import QueuedClassifier
    from services.monitor.usecases.monitor import Monitor

    repo = tiers.monitor_repo()
    with ExitStack() as stack:
        stack.enter_context(workers)
        shown = stack.enter_context(_Progress(progress))
        publish = tiers.alert_publisher()  # alerts also go to the broker's `alerts` queue
        if publish:
            stack.callback(publish.close)
        done = getattr(items, "done", None)  # a queue source acknowledges what is stored
        scoring = QueuedClassifier(app, config.model)
        m = Monitor(repo, scoring, config, run, shown.update, on_alert=publish, on_done=done)
        return m.run(items)


def scores(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model's items")] = None,
    ticker: Annotated[
        str | None, typer.Option(help="Only items mentioning this ticker ($AAPL or AAPL)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only items scored at or after this ISO time")] = None,
    run: Annotated[str | None, typer.Option(help="Only items of this monitor run")] = None,
    json_: Json = False,
) -> None:
    """Scored items, oldest first: label, probabilities and the version that scored each."""
    start = _iso(since) if since else None
    found = deployment().monitor_repo().scores(model, ticker, start, run)
    records = [
        {
            "id": s.item_id,
            "model": s.model,
            "label": s.label,
            "probabilities": s.probabilities,
            "version": s.version,
            "tickers": list(s.tickers),
            "latency_ms": s.latency_ms,
            "scored_at": s.scored_at,
            "run": s.run,
            "text": s.text,
        }
        for s in found
    ]
    rows = [{k: r[k] for k in ("id", "label", "version", "tickers", "text")} for r in records]
    emit(json_, records, rows, title="scored items")


def rejected(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model's items")] = None,
    run: Annotated[str | None, typer.Option(help="Only items of this monitor run")] = None,
    json_: Json = False,
) -> None:
    """Items the monitor refused, oldest first, each with why (not UTF-8, too long, no text...)."""
    found = deployment().monitor_repo().rejects(model, run)
    rows = [
        {"id": r.item_id, "run": r.run, "reason": r.reason, "rejected_at": r.rejected_at, "raw": r.raw[:60]}
        for r in found
    ]
    emit(json_, found, rows, title="rejected items")


def alerts(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Only this model's alerts")] = None,
    run: Annotated[str | None, typer.Option(help="Only alerts of this monitor run")] = None,
    json_: Json = False,
) -> None:
    """Alerts, oldest first, each with the items that raised it and the words that drove their labels."""
    found = deployment().monitor_repo().alerts(model, run)
    notes = {(a.model, a.version): _training(a.model, a.version) for a in found}
    rows = [
        {
            "ticker": a.ticker,
            "direction": a.direction,
            "opened": a.opened,
            "cleared": f"{a.cleared} ({a.cleared_reason})" if a.cleared else "",
            "version": a.version,
            "share": a.share,
            "why": "; ".join(evidence_line(e) for e in a.evidence),
            "model": notes[a.model, a.version],
        }
        for a in found
    ]
    shown = [{**dataclasses.asdict(a), "training": notes[a.model, a.version]} for a in found]
    emit(json_, shown, rows, title="alerts")


def evidence_line(e: Evidence) -> str:
    """An evidence item as stored (label, probability, version) and, when a newer version explained it,
    that version's probability beside it: the two are different models' answers, both true."""
    words = ", ".join(w for w, _ in e.top_tokens[:3])
    stored = f"scored {e.scored_label} {e.scored_probability:.3f} by version {e.scored_version}"
    line = f"{e.text[:50]} [{words}] {stored}"
    if e.version != e.scored_version:
        line += f"; explained on version {e.version}: {e.label} {e.probability:.3f}"
    return line


@contextmanager
def _source(
    tiers: Deployment, source: str, fmt: str, queue: str, run: str
) -> Iterator[Iterable[Item | Rejected | None]]:
    from services.monitor.usecases.items import guess_format, read_items

    limit = tiers.settings.monitor_max_item_bytes
    if is_queue_url(source):
        from services.monitor.adapters.news_queue import queue_items

        with queue_items(source, queue, run, limit) as items:
            yield items
        return
    if source == "-":
        yield read_items(sys.stdin.buffer, fmt or "csv", run, limit)
        return
    path = Path(source)
    if not path.is_file():
        raise NotFound(f"no such file: {source}")
    f: IO[bytes]
    with path.open("rb") as f:
        yield read_items(f, fmt or guess_format(path.name), run, limit)


def _companies(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"--companies {path}: {e}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise InvalidInput(f"--companies {path}: expected a JSON object of company name -> ticker")
    return {str(k): v.upper() for k, v in mapping.items()}


def _iso(text: str) -> datetime:
    from datetime import UTC

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--since {text!r} is not an ISO time (e.g. 2026-12-01T09:30:00)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class _Progress:
    """A live status line on a terminal (standard error): items/s, counts, the version serving."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.live: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(stderr=True), refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def update(self, s: Summary) -> None:
        if self.live is not None:
            d = s.as_dict()
            rate = d["scored"] / max(d["wall_seconds"], 1e-9)
            self.live.update(
                f"read {d['in']}  scored {d['scored']}  rejected {d['rejected']}  alerts {d['alerts']}  "
                f"version {s.version}  {rate:.1f} items/s"
            )

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
