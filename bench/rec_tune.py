"""Tuning the online step (lr, negatives, weight decay) on a validation window, never on the bench's replay.

The shipped ratings are split by time into three parts: the first 80% trains version 1, the next 10% (the
validation window) is replayed prequentially for each candidate step, and the last 10% (what bench_rec
reports) is not read here at all. Each candidate's versions go to a stand-in committer that only numbers
them and hands the rows to the served copy (the store's commit is the same for every candidate and costs
most of a replay's time); the bench then confirms the chosen step with the real store.

    PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.rec_tune --als
    ... -m bench.rec_tune --lr 0.03 0.05 0.07 --negatives 32 64 --weight-decay 1e-4 --out ...-2.json

`--negatives` are the online step's (RecConfig.online_negatives); training keeps RecConfig.negatives.
Found (rec-tuning.json, rec-tuning-2.json): on the validation window ALS retrained daily scores NDCG@10
0.0382; the online step at lr 0.05 with 4 negatives 0.0355, with 16 0.0362, with 64 0.0363; lr 0.02 and 0.1
are worse, weight decay 1e-4 vs 1e-2 makes no difference. 16 negatives did not carry over to the bench's
replay (0.03107 against 0.03146 with 4), so the default stays 4.
`--served-after S...` replays the window on the ratings' own clock instead (a version every second of it,
served S seconds later), as bench_rec now does: that, not the step, is what moved online past ALS daily.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmk.domain.deltas import Delta
from llmk.domain.versions import CommitInfo, Version
from services.rec.adapters import files
from services.rec.interface import RecConfig
from services.rec.usecases import evaluation as ev
from services.rec.usecases.model import Tables
from services.rec.usecases.serving import Served
from services.rec.usecases.streaming import CommitPolicy, Streamer
from services.rec.usecases.training import TrainSpec, fit

OUT = Path(__file__).parent / "results" / "rec-tuning.json"


class Numbering:
    """Commits as version numbers only; the served copy (if given) gets each version's rows at once, as a
    follower would (without one, the streamer's on_commit hands them on)."""

    def __init__(self, served: Served, apply: bool = True):
        self.served, self.last, self.apply = served, served.version, apply

    def commit(
        self,
        model: str,
        entries: Mapping[str, Delta],
        branch: str = "main",
        parent: int | None = None,
        info: CommitInfo = CommitInfo(),
    ) -> Version:
        self.last += 1
        if self.apply:
            self.served.apply(self.last, entries)
        return version(self.last, info.metadata)


def version(n: int, metadata: dict[str, Any]) -> Version:
    return Version(n, "tune", n - 1 or None, None, "tune", "", datetime.now(UTC), metadata)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--negatives", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--weight-decay", type=float, nargs="+", default=[1e-4, 1e-2])
    parser.add_argument("--als", action="store_true", help="also ALS retrained daily on the window")
    parser.add_argument(
        "--served-after",
        type=float,
        nargs="*",
        default=[],
        help="instead of --every: a version every second of the ratings' clock, served this many seconds "
        "of it after its commit (one run per value, at the first --lr/--negatives/--weight-decay)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = files.ratings(files.MOVIELENS / "ratings.csv")
    first, _bench_part = files.split(rows, 0.1)  # the bench's replay is never read below
    train, window = files.split(first, 1 / 9)  # 80% / 10% of the whole
    started = time.perf_counter()
    base = RecConfig()
    tables = fit(train, base, TrainSpec(epochs=args.epochs, batch_size=4096, lr=0.02))
    found: dict[str, Any] = {
        "command": "PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.rec_tune "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if k not in ("als", "served_after")
        )
        + (f" --served-after {' '.join(map(str, args.served_after))}" if args.served_after else "")
        + (" --als" if args.als else ""),
        "train_ratings": len(train),
        "window_interactions": len(window),
        "train_seconds": round(time.perf_counter() - started, 1),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    threshold = base.positive_threshold
    frozen = Served(tables, 1, {})
    systems: dict[str, ev.System] = {"frozen": ev.Llmk(frozen), "popular": ev.Popular(train, threshold)}
    if args.als:
        systems["als_daily"] = ev.DailyAls(train, threshold, base.dim, base.seed)
    found["baselines"] = ev.prequential(train, window, systems, 10, threshold)
    print(json.dumps(found["baselines"]), flush=True)
    for lag in args.served_after:
        found["runs"].append(_clocked(tables, base, args, train, window, lag))
        print(json.dumps(found["runs"][-1]), flush=True)
    grid = itertools.product(args.lr, args.negatives, args.weight_decay) if not args.served_after else []
    for lr, negatives, decay in grid:
        config = dataclasses.replace(base, lr=lr, online_negatives=negatives, weight_decay=decay)
        working = Tables(tables.t, config)
        served = Served(working, 1, {})
        head = version(1, {})
        streamer = Streamer(Numbering(served), "tune", "main", head, working, CommitPolicy(every=args.every))
        t0 = time.perf_counter()
        score = ev.prequential(train, window, {"online": ev.Llmk(served, streamer)}, 10, threshold)["online"]
        run = {"lr": lr, "negatives": negatives, "weight_decay": decay, **score}
        run["seconds"] = round(time.perf_counter() - t0, 1)
        found["runs"].append(run)
        print(json.dumps(run), flush=True)
    found["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    found["best"] = max(found["runs"], key=lambda r: r["ndcg_at_10"])
    args.out.write_text(json.dumps(found, indent=2) + "\n")
    print(json.dumps(found["best"]))


def _clocked(
    tables: Tables, base: RecConfig, args: argparse.Namespace, train: Any, window: Any, lag: float
) -> dict[str, Any]:
    """One replay of the window on the ratings' clock: a version a second, served `lag` seconds later."""
    config = dataclasses.replace(
        base, lr=args.lr[0], online_negatives=args.negatives[0], weight_decay=args.weight_decay[0]
    )
    working = Tables(tables.t, config)
    served = Served(working, 1, {})
    llmk = ev.Llmk(served, served_after=lag)
    policy = CommitPolicy(every_seconds=1.0)
    committer = Numbering(served, apply=False)
    llmk.streamer = Streamer(
        committer, "tune", "main", version(1, {}), working, policy, llmk.publish, clock=llmk.clock
    )
    t0 = time.perf_counter()
    score = ev.prequential(train, window, {"online": llmk}, 10, base.positive_threshold)["online"]
    run = {"every_seconds": 1.0, "served_after": lag, "lr": config.lr, "negatives": config.online_negatives}
    run |= {"weight_decay": config.weight_decay, **score, "versions": committer.last - 1}
    return run | {"seconds": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    main()
