"""`llmk demo rec`: the development split's last part streamed through the online path while the rec API
answers, scored prequentially beside llmk frozen, most-popular-so-far and ALS retrained daily.

For each interaction, in time order: every system recommends for it first (llmk online through the API, that
is the rec worker following the branch), then it goes into the stream (the Streamer that `llmk rec stream`
runs), which commits the changed rows as a version every N interactions or S seconds. The timeline records
when each interaction arrived, when its version was committed and when the worker first served it, the
version of every API answer, and the running NDCG@10 of each system.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from services.rec.interface import Interaction, RecClient
from services.rec.usecases import evaluation as ev
from services.rec.usecases import recommender
from services.rec.usecases.streaming import CommitPolicy, Streamer

if TYPE_CHECKING:
    from llmk.domain.deltas import Delta
    from llmk.domain.versions import Version
    from services.rec.usecases.following import RecWorker
    from services.store.interface import StoreClient

SYSTEMS = ("online", "frozen", "popular", "als_daily")


@dataclass(frozen=True)
class DemoSpec:
    k: int = 10
    commit_every: int = 50  # interactions per version
    commit_every_seconds: float = 1.0  # and at least one version a second while interactions come
    checkpoint: int = 250  # positives tested between two points of the NDCG timeline
    als_factors: int = 32
    catch_up_seconds: float = 30.0  # how long the worker may take to serve the last version


@dataclass
class Timeline:
    """What happened when; `served` is called on the worker's thread, the rest on the stream's."""

    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    pending: list[float] = field(default_factory=list)  # arrival times of interactions not yet committed
    arrivals: dict[int, list[float]] = field(default_factory=dict)  # version -> its interactions' arrivals
    committed_at: dict[int, float] = field(default_factory=dict)
    served_at: dict[int, float] = field(default_factory=dict)  # head the worker moved to -> when
    answers: Counter[int] = field(default_factory=Counter)  # version -> API answers it gave
    fallbacks: int = 0  # API answers for users the served version did not know
    points: list[dict[str, Any]] = field(default_factory=list)
    interactions: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def arrive(self) -> None:
        self.pending.append(self.clock())

    def committed(self, version: Version, entries: dict[str, Delta]) -> None:
        self.arrivals[version.id], self.pending = self.pending, []
        self.committed_at[version.id] = self.clock()

    def served(self, head: int) -> None:
        with self._lock:
            self.served_at.setdefault(head, self.clock())

    def first_served(self, version: int) -> float | None:
        """When the worker first served `version` or a later one (it may skip over versions)."""
        with self._lock:
            found = [t for head, t in self.served_at.items() if head >= version]
        return min(found) if found else None

    def served_seconds(self) -> list[float]:
        out: list[float] = []
        for version, arrivals in self.arrivals.items():
            served = self.first_served(version)
            if served is not None:
                out += [served - a for a in arrivals]
        return out


class ThroughApi:
    """llmk online as its users meet it: answers from the rec API, interactions into the stream."""

    def __init__(self, client: RecClient, streamer: Streamer, timeline: Timeline):
        self.client, self.streamer, self.timeline = client, streamer, timeline

    def at(self, timestamp: int) -> None:
        pass  # the demo runs on the wall clock: the worker serves versions as they come

    def recommend(self, user: int, k: int, exclude: frozenset[int]) -> list[int]:
        answer = self.client.recommend(user, k, exclude)
        self.timeline.answers[answer.version] += 1
        self.timeline.fallbacks += answer.popular
        return [s.item for s in answer.items]

    def learn(self, interaction: Interaction) -> None:
        self.timeline.arrive()
        self.streamer.offer(interaction)


def run(
    store: StoreClient,
    model: str,
    worker: RecWorker,
    client: RecClient,
    history: Sequence[Interaction],
    stream: Sequence[Interaction],
    spec: DemoSpec,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Replay `stream` on the branch `worker` follows; the report's figures (charts are drawn from it)."""
    timeline = Timeline()
    timeline.started = timeline.clock()
    first = worker.version
    frozen = recommender.serve(store, model, str(first))
    tables, head = recommender.load(store, model, worker.branch)
    worker.on_applied(timeline.served)
    policy = CommitPolicy(spec.commit_every, spec.commit_every_seconds)
    streamer = Streamer(store, model, worker.branch, head, tables, policy, timeline.committed)
    threshold = tables.config.positive_threshold
    systems: dict[str, ev.System] = {
        "online": ThroughApi(client, streamer, timeline),
        "frozen": ev.Llmk(frozen),
        "popular": ev.Popular(history, threshold),
        "als_daily": ev.DailyAls(history, threshold, spec.als_factors, tables.config.seed),
    }
    start_day = stream[0].timestamp / ev.DAY if stream else 0.0
    last_said = [timeline.clock()]

    def after(r: Interaction, scores: dict[str, ev.Score]) -> None:
        timeline.interactions += 1
        tests = scores["online"].tests
        end = timeline.interactions == len(stream)
        if tests > _last_tests(timeline) and (end or tests % spec.checkpoint == 0):
            point: dict[str, Any] = {"interactions": timeline.interactions, "tests": tests}
            point["day"] = round(r.timestamp / ev.DAY - start_day, 2)
            timeline.points.append(point | {n: round(s.ndcg / s.tests, 5) for n, s in scores.items()})
        if timeline.clock() - last_said[0] >= 10 or end:
            last_said[0] = timeline.clock()
            ndcg = ", ".join(f"{n} {s.ndcg / max(s.tests, 1):.4f}" for n, s in scores.items())
            say(
                f"{timeline.interactions}/{len(stream)} interactions, {tests} positives tested, "
                f"serving version {worker.version}; NDCG@{spec.k} so far: {ndcg}"
            )

    scores = ev.prequential(history, stream, systems, spec.k, threshold, after)
    streamer.commit()
    last = streamer.head.id
    deadline = timeline.clock() + spec.catch_up_seconds
    while worker.version != last and timeline.clock() < deadline:
        time.sleep(0.05)
    als = systems["als_daily"]
    if isinstance(als, ev.DailyAls):
        scores["als_daily"]["retrains"] = als.retrains
    return _report(store, model, first, worker.version, streamer, timeline, scores, spec)


def _last_tests(timeline: Timeline) -> int:
    return int(timeline.points[-1]["tests"]) if timeline.points else 0


def _report(
    store: StoreClient,
    model: str,
    first: int,
    served_at_end: int,
    streamer: Streamer,
    timeline: Timeline,
    scores: dict[str, dict[str, Any]],
    spec: DemoSpec,
) -> dict[str, Any]:
    summary = streamer.summary
    stats = {s.version: s for s in store.stats(model)}
    versions: list[dict[str, Any]] = []
    for n, v in enumerate(summary.versions):
        committed, served = timeline.committed_at[v], timeline.first_served(v)
        waits = [] if served is None else [served - a for a in timeline.arrivals.get(v, [])]
        versions.append(
            {
                "version": v,
                "interactions": len(timeline.arrivals.get(v, [])),
                "stored_bytes": stats[v].stored_bytes,
                "touched_row_bytes": summary.touched_bytes[n],
                "committed_seconds": round(committed - timeline.started, 3),
                "served_seconds": None if served is None else round(served - timeline.started, 3),
                "wait_p50": _quantiles(waits)["p50"],
                "wait_max": _quantiles(waits)["max"],
            }
        )
    stored = [int(v["stored_bytes"]) for v in versions]
    touched = [int(v["touched_row_bytes"]) for v in versions]
    full = stats[first].full_bytes
    k = spec.k
    online = scores["online"][f"ndcg_at_{k}"]
    return {
        "setup": asdict(spec),
        "model": model,
        "first_version": first,
        "last_version": streamer.head.id,
        "served_at_end": served_at_end,
        "systems": scores,
        "ratios": {
            f"online_over_{name}": round(online / max(s[f"ndcg_at_{k}"], 1e-9), 3)
            for name, s in scores.items()
            if name != "online"
        },
        "timeline": timeline.points,
        "stream": {key: summary.as_dict()[key] for key in ("in", "applied", "rejected", "reasons")}
        | {"appended_users": summary.appended_users, "appended_items": summary.appended_items},
        "versions": versions,
        "bytes": {
            "per_version_mean": round(float(np.mean(stored))) if stored else 0,
            "touched_rows_mean": round(float(np.mean(touched))) if touched else 0,
            "full_copy": full,
            "stored_over_touched": round(sum(stored) / max(sum(touched), 1), 4),
        },
        "interaction_to_served_seconds": _quantiles(timeline.served_seconds())
        | {"interactions": len(timeline.served_seconds())},
        "api": {
            "answers": sum(timeline.answers.values()),
            "versions_answering": len(timeline.answers),
            "popular_fallbacks": timeline.fallbacks,
            "answers_per_version": {str(v): n for v, n in sorted(timeline.answers.items())},
        },
    }


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    q = np.percentile(np.array(values), [50, 90, 99, 100])
    return dict(zip(("p50", "p90", "p99", "max"), (round(float(x), 4) for x in q), strict=True))


NAMES = {
    "online": "llmk online",
    "frozen": "llmk frozen",
    "popular": "most popular",
    "als_daily": "ALS daily",
}


def markdown(report: dict[str, Any]) -> str:
    """report.md: the figures of report.json a person reads first, and the charts beside it."""
    k = report["setup"]["k"]
    s, b, w, api = report["stream"], report["bytes"], report["interaction_to_served_seconds"], report["api"]
    lines = [
        "# llmk demo rec",
        "",
        f"MovieLens (development split): {report['history_ratings']} ratings trained version "
        f"{report['first_version']} in {report['train_seconds']} s; the next {s['in']} interactions were "
        f"streamed through the online path while the rec API (gRPC) answered each test first. "
        f"Wall time {report['wall_seconds']} s.",
        "",
        f"| system | NDCG@{k} | recall@{k} | llmk online's NDCG / this |",
        "|---|---|---|---|",
    ]
    for name, found in report["systems"].items():
        ratio = "1.0" if name == "online" else f"{report['ratios'][f'online_over_{name}']} x"
        lines.append(
            f"| {NAMES.get(name, name)} | {found[f'ndcg_at_{k}']} | {found[f'recall_at_{k}']} | {ratio} |"
        )
    tests = report["systems"]["online"]["tests"]
    lines += [
        "",
        f"{tests} positives tested (an item the user had not seen before, rating >= 4); "
        "the last column divides llmk online's NDCG by the system's.",
        "",
        f"- Stream: in {s['in']} = applied {s['applied']} + rejected {s['rejected']} {s['reasons'] or ''}; "
        f"{s['appended_users']} users and {s['appended_items']} items appended as new rows.",
        f"- Versions {_span(report['versions'])} ({len(report['versions'])} committed by the stream); "
        f"the worker served {report['served_at_end']} at the end.",
        f"- Bytes per version {b['per_version_mean']} (mean) vs {b['touched_rows_mean']} bytes of "
        f"touched rows ({b['stored_over_touched']} x) vs a full copy of {b['full_copy']} bytes.",
        f"- Interaction to served (arrival in the stream to the worker serving its version): "
        f"p50 {w['p50']} s, p99 {w['p99']} s, max {w['max']} s over {w['interactions']} interactions.",
        "  The replay runs every system on one thread, so an ALS retrain (once a simulated day) also holds "
        "the stream back: most of that wait is the baseline's, not the commit's or the worker's.",
        f"- API answers: {api['answers']} from {api['versions_answering']} versions "
        f"({api['popular_fallbacks']} for users the serving version did not know: popular items).",
        "",
        "![NDCG over time](ndcg.png)",
        "![bytes per version](bytes.png)",
        "![interaction to served](served.png)",
        "",
    ]
    return "\n".join(lines)


def _span(versions: list[dict[str, Any]]) -> str:
    return f"{versions[0]['version']}..{versions[-1]['version']}" if versions else "none"
