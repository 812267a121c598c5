"""Recommendation: llmk online vs llmk frozen vs most-popular-so-far vs implicit's ALS retrained daily.

The shipped MovieLens sample (services/rec/data) is split by time: the first 90% trains the first version,
the last 10% is replayed in time order (prequential: recommend first, then learn). Every system sees the
same interactions and excludes the same seen items. Writes bench/results/rec.json.

    PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec [--every 50] [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from services.rec.adapters import files
from services.rec.interface import RecConfig
from services.rec.usecases import recommender
from services.rec.usecases.replay import ReplaySpec, replay
from services.rec.usecases.training import TrainSpec

OUT = Path(__file__).parent / "results" / "rec.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=50, help="interactions per version while online")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=32)
    args = parser.parse_args()
    from llmk.bootstrap import Deployment
    from llmk.config import Settings

    rows = files.ratings(files.MOVIELENS / "ratings.csv")
    history, held_out = files.split(rows, 0.1)
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(_env_file=None, home=Path(home), database_url="", broker_url="memory://")
        store = Deployment(settings).local_store()
        started = time.perf_counter()
        config = RecConfig(dim=args.dim)
        recommender.create(
            store, "ml", history, {}, config, TrainSpec(epochs=args.epochs, batch_size=4096, lr=0.02)
        )
        train_s = time.perf_counter() - started
        started = time.perf_counter()
        online = replay(store, "ml", "main", history, held_out, ReplaySpec(every=args.every, baselines=True))
        online_s = time.perf_counter() - started
        frozen = replay(store, "ml", "main", history, held_out, ReplaySpec(online=False))
    systems = {**online["systems"], **frozen["systems"]}
    report = {
        "data": "MovieLens ml-latest-small (first 90% by time, as shipped); dev split: last 10% replayed",
        "history_ratings": len(history),
        "replayed_interactions": len(held_out),
        "config": {"dim": args.dim, "epochs": args.epochs, "commit_every": args.every},
        "train_seconds": round(train_s, 1),
        "online_replay_seconds_with_baselines": round(online_s, 1),
        "systems": systems,
        "ratios": {
            f"online_over_{name}": round(systems["online"]["ndcg_at_10"] / max(s["ndcg_at_10"], 1e-9), 3)
            for name, s in systems.items()
            if name != "online"
        },
        "versions": online["versions"],
        "bytes_per_version": online["bytes_per_version"],
        "full_copy_bytes": online["full_copy_bytes"],
        "touched_row_bytes_per_version": online["touched_row_bytes_per_version"],
        "bytes_over_touched": online["bytes_over_touched"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
