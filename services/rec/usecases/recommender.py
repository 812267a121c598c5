"""A recommender model's life in the store: created from ratings, loaded at a ref, served, streamed into."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from llmk.domain.versions import CommitInfo
from llmk.errors import InvalidInput
from services.rec.interface import Interaction, RecConfig, Rejection, StreamSummary
from services.rec.usecases.content import place_cold_items
from services.rec.usecases.serving import Served
from services.rec.usecases.streaming import META_KEY, CommitPolicy, Published, Streamer, Watermark
from services.rec.usecases.training import TrainSpec, fit

if TYPE_CHECKING:
    from torch import Tensor

    from llmk.domain.versions import Version
    from services.rec.usecases.model import Tables
    from services.store.interface import StoreClient

TITLES_FILE = "items.json"


def create(
    store: StoreClient,
    name: str,
    ratings: Sequence[Interaction],
    titles: Mapping[int, str],
    config: RecConfig,
    spec: TrainSpec,
    content: Mapping[int, Tensor] | None = None,
) -> Version:
    """A new model whose first version is BPR trained on `ratings`; titles (the whole catalog's, so items
    the stream appends later keep theirs) are stored as a model file.
    With `content` (item -> content vector), every titled item nobody rated gets a row placed from it."""
    if not ratings:
        raise InvalidInput("the ratings file holds no rating")
    tables = fit(ratings, config, spec)
    cold = place_cold_items(tables, content, sorted(titles)) if content else []
    last = max(r.timestamp for r in ratings)
    mark = Watermark(last, {(r.user, r.item) for r in ratings if r.timestamp == last})
    # every title of the catalog, rated or not: an item the stream appends later is named like the rest
    known = {str(i): title for i, title in titles.items()}
    info = CommitInfo(
        author="llmk-rec-train",
        message=f"rec train: {len(ratings)} ratings, {config.dim} dims, {spec.epochs} epochs, "
        f"{len(cold)} items placed by content",
        metadata={META_KEY: mark.as_metadata()},
    )
    files = {TITLES_FILE: json.dumps(known, sort_keys=True).encode()}
    return store.create_model(name, tables.t, config.as_dict(), files, info)


def load(store: StoreClient, model: str, ref: str | None = None) -> tuple[Tables, Version]:
    from services.rec.usecases.model import Tables

    config = store.model(model).config
    if config.get("kind") != "rec":
        raise InvalidInput(f"model {model!r} is not a recommender (its config has no kind 'rec')")
    version = store.version(model, ref)
    return Tables(store.fetch(model, str(version.id)), RecConfig.of(config)), version


def titles(store: StoreClient, model: str) -> dict[int, str]:
    if TITLES_FILE not in store.model(model).files:
        return {}
    return {int(k): v for k, v in json.loads(store.file(model, TITLES_FILE)).items()}


def serve(store: StoreClient, model: str, ref: str | None = None) -> Served:
    tables, version = load(store, model, ref)
    return Served(tables, version.id, titles(store, model))


def stream(
    store: StoreClient,
    model: str,
    branch: str,
    records: Iterable[Interaction | Rejection],
    policy: CommitPolicy,
    on_commit: Published | None = None,
) -> StreamSummary:
    """Apply `records` to the head of `branch`, committing the changed rows as the policy says."""
    tables, head = load(store, model, branch)
    return Streamer(store, model, branch, head, tables, policy, on_commit).consume(records)
