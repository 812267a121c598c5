"""`rec evaluate`: replay a ratings file through a stored model (online or frozen) and the baselines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmk.errors import InvalidInput
from services.rec.interface import Interaction
from services.rec.usecases import evaluation as ev
from services.rec.usecases import recommender
from services.rec.usecases.streaming import CommitPolicy, Streamer

if TYPE_CHECKING:
    from services.rec.usecases.serving import Served
    from services.store.interface import StoreClient


@dataclass(frozen=True)
class ReplaySpec:
    """While replaying online, a version is committed every `every` interactions and/or every
    `every_seconds` seconds of the ratings' own clock, and answers `served_after` seconds of that clock
    after its commit. The defaults are `rec stream --commit-every-seconds 1` with the interaction-to-served
    p99 the issue allows (5 s; measured: about 1 s, bench/results/rec.json)."""

    k: int = 10
    online: bool = True
    every: int = 0  # interactions per version (0: not by count)
    every_seconds: float = 1.0  # seconds of the ratings' clock per version (0: not by time)
    served_after: float = 5.0  # seconds of the ratings' clock from a commit to its first answer
    baselines: bool = False  # most-popular-so-far and ALS retrained daily, in the same run
    als_factors: int = 32

    def __post_init__(self) -> None:
        if self.every < 0 or self.every_seconds < 0 or self.served_after < 0:
            raise InvalidInput(
                f"every, every_seconds and served_after must be >= 0, got {self.every}, "
                f"{self.every_seconds}, {self.served_after}"
            )
        if self.online and not (self.every or self.every_seconds):
            raise InvalidInput("an online replay needs a version every N interactions or S seconds")


def replay(
    store: StoreClient,
    model: str,
    ref: str | None,
    history: Sequence[Interaction],
    stream: Sequence[Interaction],
    spec: ReplaySpec,
) -> dict[str, Any]:
    """Scores per system; online versions go to a new branch `eval-<version>-<n>`, leaving `ref` as it was."""
    served = recommender.serve(store, model, ref)
    threshold = served.config.positive_threshold
    name = "online" if spec.online else "frozen"
    start = served.version
    llmk = ev.Llmk(served, served_after=spec.served_after)
    streamer = _streamer(store, model, served, spec, llmk) if spec.online else None
    llmk.streamer = streamer
    systems: dict[str, ev.System] = {name: llmk}
    if spec.baselines:
        systems["popular"] = ev.Popular(history, threshold)
        systems["als_daily"] = ev.DailyAls(history, threshold, spec.als_factors, served.config.seed)
    scores = ev.prequential(history, stream, systems, spec.k, threshold)
    result: dict[str, Any] = {"model": model, "from_version": start, "versions": 0}
    if streamer is not None:
        streamer.commit()
        result |= _bytes(store, model, streamer)
    als = systems.get("als_daily")
    if isinstance(als, ev.DailyAls):
        scores["als_daily"]["retrains"] = als.retrains
    return {**result, "systems": scores}


def _streamer(store: StoreClient, model: str, served: Served, spec: ReplaySpec, llmk: ev.Llmk) -> Streamer:
    tables, head = recommender.load(store, model, str(served.version))
    branch = _free_branch(store, model, head.id)
    store.branch(model, branch, str(head.id))
    policy = CommitPolicy(every=spec.every, every_seconds=spec.every_seconds)
    return Streamer(store, model, branch, head, tables, policy, llmk.publish, clock=llmk.clock)


def _free_branch(store: StoreClient, model: str, version: int) -> str:
    taken = {r.name for r in store.refs(model)}
    n = 1
    while f"eval-{version}-{n}" in taken:
        n += 1
    return f"eval-{version}-{n}"


def _bytes(store: StoreClient, model: str, streamer: Streamer) -> dict[str, Any]:
    made = set(streamer.summary.versions)
    stats = [s for s in store.stats(model) if s.version in made]
    stored = [s.stored_bytes for s in stats]
    touched = streamer.summary.touched_bytes
    return {
        "branch": streamer.branch,
        "versions": len(made),
        "stream": {
            k: v
            for k, v in streamer.summary.as_dict().items()
            if k in ("in", "applied", "rejected", "reasons")
        },
        "bytes_per_version": round(sum(stored) / max(len(stored), 1)),
        "full_copy_bytes": stats[-1].full_bytes if stats else 0,
        "touched_row_bytes_per_version": round(sum(touched) / max(len(touched), 1)),
        "bytes_over_touched": round(sum(stored) / max(sum(touched), 1), 4),
    }
