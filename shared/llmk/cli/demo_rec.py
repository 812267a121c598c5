"""`llmk demo rec --out DIR`: a recommender trained on the shipped MovieLens sample, then the development
split's last part streamed through the online path while the rec API answers; report.json, report.md and PNG
charts in DIR.

Embedded: one process on SQLite and the in-process broker, a fresh home under DIR. The rec worker is the
one `llmk serve rec` runs (gRPC on a free local port, following the branch through version events); the
online system's recommendations come from it, so they are what a client sees while the stream commits.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from llmk.cli.context import Json
from llmk.cli.output import emit
from llmk.errors import InvalidInput

MODEL = "movielens"


def register(app: typer.Typer) -> None:
    app.command("rec")(rec)


def rec(
    out: Annotated[Path, typer.Option(help="Folder for the report, the charts and the store")] = Path(
        "llmk-demo-rec"
    ),
    held_out: Annotated[
        float, typer.Option(help="Fraction of the latest ratings replayed as the stream")
    ] = 0.1,
    history: Annotated[
        int, typer.Option(help="Train on only the latest N ratings before the stream (0: all)")
    ] = 0,
    stream: Annotated[
        int, typer.Option(help="Stream only the first N interactions of the last part (0: all)")
    ] = 0,
    epochs: Annotated[int, typer.Option(help="Training passes for the first version")] = 10,
    dim: Annotated[int, typer.Option(help="Embedding width")] = 32,
    commit_every: Annotated[int, typer.Option(help="Interactions per streamed version")] = 50,
    commit_every_seconds: Annotated[float, typer.Option(help="Seconds per streamed version (0: off)")] = 1.0,
    checkpoint: Annotated[int, typer.Option(help="Positives tested between points of the NDCG chart")] = 250,
    seed: Annotated[int, typer.Option(help="Seed of training and sampling")] = 0,
    json_: Json = False,
) -> None:
    """Train on MovieLens, stream the rest through the online path while the API answers, and report
    NDCG@10 over time against llmk frozen, most-popular and ALS retrained daily."""
    if history < 0 or stream < 0 or epochs < 0 or dim < 1 or commit_every < 1 or checkpoint < 1:
        raise InvalidInput(
            "need --history >= 0, --stream >= 0, --epochs >= 0, --dim >= 1, --commit-every >= 1 and "
            "--checkpoint >= 1"
        )
    if commit_every_seconds < 0:
        raise InvalidInput("--commit-every-seconds must be >= 0")
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file: name a folder for the report")
    started = time.monotonic()
    from llmk.bootstrap import embedded, reached_over_grpc
    from llmk.cli.context import deployment
    from llmk.config import Settings
    from services.rec import main as rec_main
    from services.rec.adapters import charts, files
    from services.rec.interface import RecConfig
    from services.rec.usecases import demo_run, recommender
    from services.rec.usecases.training import TrainSpec

    train_part, last_part = files.split(files.ratings(files.MOVIELENS / "ratings.csv"), held_out)
    past = train_part[-history:] if history else train_part
    replayed = last_part[:stream] if stream else last_part
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"
    shutil.rmtree(home, ignore_errors=True)  # a fresh store: the report covers this run only
    settings = embedded(Settings(), home)

    def say(text: str) -> None:
        if not json_:
            print(f"llmk demo rec [{time.monotonic() - started:6.1f} s]: {text}", file=sys.stderr, flush=True)

    store = deployment(settings).store()
    try:
        say(f"training version 1 on {len(past)} ratings ({epochs} epochs, {dim} dims)")
        trained = time.monotonic()
        config = RecConfig(dim=dim, seed=seed)
        spec = TrainSpec(epochs=epochs, batch_size=4096, lr=0.02)
        titles = files.titles(files.MOVIELENS / "movies.csv")
        recommender.create(store, MODEL, past, titles, config, spec)
        train_seconds = time.monotonic() - trained
        serving = settings.model_copy(update={"serve_model": f"{MODEL}@main", "listen": "127.0.0.1:0"})
        running = rec_main.build(deployment(serving))
        running.server.start()
        address = f"127.0.0.1:{running.port}"
        client = deployment(reached_over_grpc(settings, rec=address)).rec(MODEL)
        say(f"rec worker answering on {address}; streaming {len(replayed)} interactions")
        try:
            plan = demo_run.DemoSpec(
                commit_every=commit_every,
                commit_every_seconds=commit_every_seconds,
                checkpoint=checkpoint,
                als_factors=dim,
            )
            report = demo_run.run(store, MODEL, running.worker, client, past, replayed, plan, say)
        finally:
            client.close()
            running.stop()
    finally:
        store.close()
    report = {
        "data": "MovieLens ml-latest-small as shipped, split by time: the earliest ratings train version 1, "
        f"the latest {held_out:.0%} are the development split's last part, replayed in time order",
        "history_ratings": len(past),
        "epochs": epochs,
        "dim": dim,
        "train_seconds": round(train_seconds, 1),
        **report,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(demo_run.markdown(report))
    charts.draw(out, report)
    k = plan.k
    headline = {f"{name} NDCG@{k}": s[f"ndcg_at_{k}"] for name, s in report["systems"].items()}
    b = report["bytes"]
    headline |= {
        "in = applied + rejected": f"{report['stream']['in']} = {report['stream']['applied']} + "
        f"{report['stream']['rejected']}",
        "versions": len(report["versions"]),
        "bytes per version / full copy": f"{b['per_version_mean']} / {b['full_copy']}",
        "interaction to served p50, p99 (s)": f"{report['interaction_to_served_seconds']['p50']}, "
        f"{report['interaction_to_served_seconds']['p99']}",
        "report": str(out / "report.md"),
    }
    emit(json_, report, [{"figure": key, "value": value} for key, value in headline.items()], "llmk demo rec")
