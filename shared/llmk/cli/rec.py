"""`llmk rec ...`: train, recommend, stream and evaluate a recommender kept in the parameter store.

The store is reached as every command reaches it (llmk.cli.context.store_session: gRPC at
LLMK_STORE_ADDRESS, else in process), recommendations through llmk.bootstrap (the rec worker at
LLMK_REC_ADDRESS, else in process); failures print one line and exit non-zero through llmk.cli.main.run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from llmk.cli.context import Json, deployment, split_ref, store_session
from llmk.config import Settings
from llmk.errors import InvalidInput

if TYPE_CHECKING:
    from torch import Tensor

    from services.rec.adapters.seen import SeenLog

app = typer.Typer(
    help="Recommendation: embedding tables in the store, learning row by row.", no_args_is_help=True
)
Model = Annotated[str, typer.Option("--model", "-m", help="Stored recommender model")]


def _emit(payload: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, sort_keys=True))
    else:
        for key, value in payload.items():
            print(f"{key}: {value}")


def _seen(settings: Settings) -> SeenLog:
    from services.rec.adapters.seen import SeenLog

    return SeenLog(settings.home / "rec" / "seen.sqlite")


@app.command()
def train(
    model: Model,
    ratings: Annotated[Path, typer.Option(help="CSV or JSONL: user,item,rating,timestamp")],
    items: Annotated[Path | None, typer.Option(help="movies.csv: movieId,title,genres")] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the positives")] = 20,
    dim: Annotated[int, typer.Option(help="Embedding width")] = 32,
    max_users: Annotated[int, typer.Option(help="User table rows (capacity for growth)")] = 2048,
    max_items: Annotated[int, typer.Option(help="Item table rows (capacity for growth)")] = 16384,
    lr: Annotated[float, typer.Option(help="Adam learning rate")] = 0.02,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and sampling")] = 0,
    content_model: Annotated[
        str, typer.Option(help="NAME[@REF] of a served LLM: place unrated --items by their text")
    ] = "",
    tags: Annotated[Path | None, typer.Option(help="tags.csv (userId,movieId,tag,timestamp)")] = None,
    json_: Json = False,
) -> None:
    """Create MODEL's first version: BPR on the ratings' positives (rating >= 4). With --content-model,
    every item of --items that nobody rated gets a row placed from the LLM's reading of its text."""
    from services.rec.adapters import files
    from services.rec.interface import RecConfig
    from services.rec.usecases import recommender
    from services.rec.usecases.training import TrainSpec

    if content_model and not items:
        raise InvalidInput("--content-model reads the items' titles and genres: give --items too")
    rows = files.ratings(ratings)
    names = files.titles(items) if items else {}
    config = RecConfig(dim=dim, max_users=max_users, max_items=max_items, seed=seed)
    content = _content(content_model, items, tags) if content_model and items else None
    with store_session() as session:
        spec = TrainSpec(epochs=epochs, batch_size=4096, lr=lr)
        version = recommender.create(session.store, model, rows, names, config, spec, content)
        seen = _seen(session.settings)
        seen.add(model, ((r.user, r.item) for r in rows))
    _emit({"model": model, "version": version.id, "ratings": len(rows), "dim": dim}, json_)


def _content(llm: str, items: Path, tags: Path | None) -> dict[int, Tensor]:
    """Content vectors of every item, by the LLM served as llmk.bootstrap says (here, or over gRPC)."""
    from services.rec.adapters import files
    from services.rec.usecases import content

    name, ref = split_ref(llm)
    client = deployment().inference(name, ref)
    try:
        return content.vectors(client, files.item_texts(items, tags))
    finally:
        client.close()


@app.command()
def recommend(
    model: Model,
    user: Annotated[int, typer.Option(help="User id")],
    k: Annotated[int, typer.Option(help="How many items")] = 10,
    ref: Annotated[str, typer.Option(help="Version, tag or branch (default: main)")] = "",
    exclude_seen: Annotated[
        bool, typer.Option("--exclude-seen", help="Leave out items the user rated")
    ] = False,
    queue: Annotated[
        bool, typer.Option("--queue", help="Ask through the rec queue (LLMK_BROKER_URL, LLMK_REC_QUEUE)")
    ] = False,
    json_: Json = False,
) -> None:
    """Top-k items for USER with the version that answered; an unknown user gets the popular items.
    With LLMK_REC_ADDRESS set, the rec worker there answers (over gRPC); with --queue, a worker consuming
    the rec queue (`llmk serve rec --worker`; with the in-process broker, one started here)."""
    settings = Settings()
    exclude = _seen(settings).items(model, user) if exclude_seen else frozenset()
    tiers = deployment(settings)
    if queue:
        if ref and not tiers.broker_in_process:
            raise InvalidInput("a queued rec worker serves its own branch: drop --ref")
        app = tiers.rec_queue()
        with tiers.rec_workers(app, model, ref or None):
            client = tiers.rec(model, None, queued=True)
            answer = client.recommend(user, k, exclude)
    else:
        client = tiers.rec(model, ref or None)
        try:
            answer = client.recommend(user, k, exclude)
        finally:
            client.close()
    if json_:
        _emit(answer.as_dict(), True)
        return
    note = " (unknown user: the most popular items)" if answer.popular else ""
    print(f"user {user} at version {answer.version}{note}")
    for s in answer.items:
        print(f"{s.item}\t{s.score:.4f}\t{s.title}")


@app.command()
def stream(
    model: Model,
    source: Annotated[str, typer.Option(help="CSV or JSONL file of interactions, or - for stdin")],
    fmt: Annotated[str, typer.Option("--format", help="csv or jsonl (default: from the name)")] = "",
    branch: Annotated[str, typer.Option(help="Branch to commit to")] = "main",
    commit_every: Annotated[int, typer.Option(help="Interactions per version (0: off)")] = 1000,
    commit_every_seconds: Annotated[float, typer.Option(help="Seconds per version (0: off)")] = 0.0,
    json_: Json = False,
) -> None:
    """Learn online from interactions: versions hold only the changed and appended rows."""
    from services.rec.adapters import files
    from services.rec.usecases import recommender
    from services.rec.usecases.streaming import CommitPolicy, Streamer

    if commit_every < 0 or commit_every_seconds < 0:
        raise InvalidInput("--commit-every and --commit-every-seconds must be >= 0")
    with store_session() as session:
        seen = _seen(session.settings)
        tables, head = recommender.load(session.store, model, branch)
        streamer: Streamer
        streamer = Streamer(
            session.store,
            model,
            branch,
            head,
            tables,
            CommitPolicy(commit_every, commit_every_seconds),
            lambda version, entries: seen.add(model, streamer.applied_pairs),
        )
        found = files.records(source, fmt or ("csv" if source == "-" else ""))
        ticks = commit_every_seconds / 4 if commit_every_seconds else 0
        summary = streamer.consume(files.ticking(found, ticks) if ticks else found)
    _emit(summary.as_dict(), json_)


@app.command()
def evaluate(
    model: Model,
    ratings: Annotated[Path, typer.Option(help="Interactions to replay in time order")],
    history: Annotated[Path | None, typer.Option(help="The ratings the model was trained on")] = None,
    k: Annotated[int, typer.Option(help="Cut-off of ndcg and recall")] = 10,
    online: Annotated[bool, typer.Option("--online/--frozen", help="Learn while replaying, or not")] = True,
    commit_every: Annotated[int, typer.Option(help="Interactions per version when online (0: off)")] = 0,
    commit_every_seconds: Annotated[
        float, typer.Option(help="Seconds of the ratings' own clock per version when online (0: off)")
    ] = 1.0,
    served_after: Annotated[
        float, typer.Option(help="Seconds of the ratings' clock from a commit to its first answer")
    ] = 5.0,
    baselines: Annotated[bool, typer.Option(help="Also most-popular and ALS retrained daily")] = False,
    json_: Json = False,
) -> None:
    """Prequential evaluation: each positive is recommended for first, then learned from (--online)."""
    from services.rec.adapters import files
    from services.rec.usecases.replay import ReplaySpec, replay

    if commit_every < 0 or commit_every_seconds < 0 or served_after < 0:
        raise InvalidInput("--commit-every, --commit-every-seconds and --served-after must be >= 0")
    if online and not (commit_every or commit_every_seconds):
        raise InvalidInput("--online needs --commit-every or --commit-every-seconds above 0")
    spec = ReplaySpec(k, online, commit_every, commit_every_seconds, served_after, baselines)
    past = files.ratings(history) if history else []
    with store_session() as session:
        result = replay(session.store, model, None, past, files.ratings(ratings), spec)
    _emit(result, json_)


@app.command()
def split(
    ratings: Annotated[
        Path, typer.Option(help="Ratings file (default: the shipped MovieLens sample)")
    ] = Path(""),
    out: Annotated[Path, typer.Option(help="Folder for train.csv and heldout.csv")] = Path("rec-split"),
    held_out: Annotated[float, typer.Option(help="Fraction of the latest ratings held out")] = 0.1,
) -> None:
    """A time-ordered development split: the earliest ratings to train on, the latest to replay."""
    from services.rec.adapters import files

    rows = files.ratings(ratings if str(ratings) not in ("", ".") else files.MOVIELENS / "ratings.csv")
    first, rest = files.split(rows, held_out)
    files.write_ratings(first, out / "train.csv")
    files.write_ratings(rest, out / "heldout.csv")
    print(f"{len(first)} ratings in {out / 'train.csv'}, {len(rest)} in {out / 'heldout.csv'}")
