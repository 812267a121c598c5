"""Recommendation: llmk online vs llmk frozen vs most-popular-so-far vs implicit's ALS retrained daily.

The shipped MovieLens sample (services/rec/data) is split by time: the first 90% trains the first version,
the last 10% is replayed in time order (prequential: recommend first, then learn). Every system sees the
same interactions and excludes the same seen items, on the ratings' own clock: llmk online commits a version
every second of it and serves it 5 s later (what `rec stream --commit-every-seconds 1` does with the latency
goal's p99), ALS retrains from scratch before each new day. `--part latency` measures, with the store, a rec
worker and the streamer as separate processes (bench/rec_latency.py), interaction-to-served seconds and the
gRPC `recommend` latency, on SQLite and, when they answer, PostgreSQL + RabbitMQ. Each part updates its keys
of bench/results/rec.json. `--part throughput` measures how many interactions per second `rec stream` keeps
up with (bench/rec_throughput.py). `--part cold` compares cold items placed by SmolLM2's content vectors
with zero rows and random placement (bench/rec_cold.py).

    PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec --part accuracy
        [--every-seconds 1] [--served-after 5] [--epochs 20]
    PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec --part latency
    PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec --part cold
    PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec --part throughput
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench import rec_latency as lat
from bench.rec_cold import cold_start
from bench.rec_throughput import throughput
from services.rec.adapters import files
from services.rec.interface import RecConfig
from services.rec.usecases import recommender
from services.rec.usecases.replay import ReplaySpec, replay
from services.rec.usecases.training import TrainSpec

OUT = Path(__file__).parent / "results" / "rec.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=int, default=0, help="interactions per version while online")
    parser.add_argument("--every-seconds", type=float, default=1.0, help="seconds of the ratings' clock")
    parser.add_argument("--served-after", type=float, default=5.0, help="commit to served, ratings' clock")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--part", choices=("accuracy", "latency", "cold", "throughput", "all"), default="all")
    parser.add_argument("--warm-items", type=int, default=600, help="cold: items to fit on")
    parser.add_argument("--probes", type=int, default=60, help="interaction-to-served probes per backend")
    args = parser.parse_args()
    report = json.loads(OUT.read_text()) if OUT.is_file() else {}
    if args.part in ("accuracy", "all"):
        report |= accuracy(args)
    if args.part in ("latency", "all"):
        report["latency"] = {
            "command": "PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec "
            f"--part latency --probes {args.probes}",
            **latency(args.probes),
        }
    if args.part in ("cold", "all"):
        report["cold_start"] = {
            "command": "PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec "
            f"--part cold --epochs {args.epochs} --warm-items {args.warm_items}",
            **cold_start(args.epochs, args.dim, args.warm_items),
        }
    if args.part in ("throughput", "all"):
        rows_ = files.ratings(files.MOVIELENS / "ratings.csv")
        report["stream_throughput"] = {
            "command": "PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec "
            "--part throughput",
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            **throughput(*files.split(rows_, 0.1)),
        }
    report["bench"], report["rows"] = "rec", rows(report)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline figures for the README's table (bench/report.py), from the parts measured."""
    found: list[dict[str, Any]] = []
    if systems := report.get("systems"):
        online = systems["online"]["ndcg_at_10"]
        for peer in ("als_daily", "frozen", "popular"):
            ratio = report["ratios"][f"online_over_{peer}"]
            base = f"{peer} {systems[peer]['ndcg_at_10']}"
            found.append(dict(metric=f"online NDCG@10 vs {peer}", value=online, baseline=base, ratio=ratio))
            found[-1]["goal"] = ">= 1.0x"
        if "online_recall_over_als_daily" in report["ratios"]:
            recall = systems["online"]["recall_at_10"]
            base = f"als_daily {systems['als_daily']['recall_at_10']}"
            ratio = report["ratios"]["online_recall_over_als_daily"]
            found.append(
                dict(metric="online recall@10 vs als_daily", value=recall, baseline=base, ratio=ratio)
            )
            found[-1]["goal"] = ">= 1.0x"
        found.append(dict(metric="bytes per version / touched rows", value=report["bytes_over_touched"]))
        found[-1]["goal"] = "<= 1.2"
    pg = report.get("latency", {}).get("postgresql_rabbitmq", {})
    if served := pg.get("interaction_to_served_seconds"):
        for q, goal in (("p50", "< 2000 ms"), ("p99", "< 5000 ms")):
            metric = f"interaction to served {q} (PostgreSQL + RabbitMQ, commit every 1 s)"
            found.append(dict(metric=metric, value=served[q] * 1000, unit="ms", goal=goal))
        asked = pg["recommend_grpc_ms_k10_all_items"]
        found.append(dict(metric="recommend over gRPC p50, k=10, all items", value=asked["p50"], unit="ms"))
        found[-1]["goal"] = "< 20 ms"
    if flow := report.get("stream_throughput"):
        found.append(dict(metric="rec stream interactions/s (commit every 1 s)"))
        found[-1] |= {"value": flow["closed_form_per_second"], "goal": ">= 500"}
        found[-1] |= {"baseline": f"autograd step {flow['autograd_baseline_per_second']}"}
        found[-1]["ratio"] = flow["closed_form_over_autograd"]
    if cold := report.get("cold_start"):
        ndcg = {name: s["ndcg_at_10"] for name, s in cold["systems"].items()}
        ratio = round(ndcg["content_rows"] / max(ndcg["random_rank_expected"], 1e-9), 2)
        base = f"random rank {ndcg['random_rank_expected']}"
        found.append(dict(metric="cold items NDCG@10, content rows", value=ndcg["content_rows"]))
        found[-1] |= {"baseline": base, "ratio": ratio, "goal": ">= 1.0x"}
    return found


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from llmk.bootstrap import Deployment
    from llmk.config import Settings

    rows = files.ratings(files.MOVIELENS / "ratings.csv")
    history, held_out = files.split(rows, 0.1)
    load_before = os.getloadavg()
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
        spec = ReplaySpec(
            every=args.every, every_seconds=args.every_seconds, served_after=args.served_after, baselines=True
        )
        online = replay(store, "ml", "main", history, held_out, spec)
        online_s = time.perf_counter() - started
        frozen = replay(store, "ml", "main", history, held_out, ReplaySpec(online=False))
    systems = {**online["systems"], **frozen["systems"]}
    report = {
        "data": "MovieLens ml-latest-small (first 90% by time, as shipped); dev split: last 10% replayed",
        "history_ratings": len(history),
        "replayed_interactions": len(held_out),
        "command": "PYTHONPATH=shared:. OPENBLAS_NUM_THREADS=1 .venv/bin/python -m bench.bench_rec "
        f"--part accuracy --every {args.every} --every-seconds {args.every_seconds} "
        f"--served-after {args.served_after} --epochs {args.epochs} --dim {args.dim}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "config": {
            "dim": args.dim,
            "epochs": args.epochs,
            "commit_every": args.every,
            "commit_every_seconds_of_ratings_clock": args.every_seconds,
            "served_after_seconds_of_ratings_clock": args.served_after,
        },
        "train_seconds": round(train_s, 1),
        "online_replay_seconds_with_baselines": round(online_s, 1),
        "systems": systems,
        "ratios": {
            f"online_over_{name}": round(systems["online"]["ndcg_at_10"] / max(s["ndcg_at_10"], 1e-9), 3)
            for name, s in systems.items()
            if name != "online"
        }
        | {
            f"online_recall_over_{name}": round(
                systems["online"]["recall_at_10"] / max(s["recall_at_10"], 1e-9), 3
            )
            for name, s in systems.items()
            if name != "online"
        },
        "versions": online["versions"],
        "bytes_per_version": online["bytes_per_version"],
        "full_copy_bytes": online["full_copy_bytes"],
        "touched_row_bytes_per_version": online["touched_row_bytes_per_version"],
        "bytes_over_touched": online["bytes_over_touched"],
    }
    return report


POSTGRES = os.environ.get("LLMK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("LLMK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def latency(probes: int) -> dict[str, Any]:
    """Both figures per backend: SQLite with the worker polling the head every 0.2 s (events stay in the
    store's process), and PostgreSQL + RabbitMQ with version events crossing processes."""
    rows = files.ratings(files.MOVIELENS / "ratings.csv")
    history, held_out = files.split(rows, 0.1)
    backends = {"sqlite": {"version_poll_seconds": "0.2"}, "postgresql_rabbitmq": {
        "database_url": POSTGRES, "broker_url": AMQP, "version_poll_seconds": "30"}}  # fmt: skip
    found: dict[str, Any] = {"commit_every_seconds": 1.0, "train_epochs": 1}
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train.csv"
        files.write_ratings(history, train)
        for name, settings in backends.items():
            env = lat.environment(Path(tmp) / name, **settings)
            try:
                found[name] = _one_backend(env, train, history, held_out, probes)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:  # a backend not running here
                found[name] = {"error": str(e)[-500:]}
    return found


def _one_backend(
    env: dict[str, str], train: Path, history: list[Any], held_out: list[Any], probes: int
) -> Any:
    model = f"ml-{uuid.uuid4().hex[:8]}"
    args = ["--ratings", str(train), "--items", str(files.MOVIELENS / "movies.csv"), "--epochs", "1"]
    with lat.cluster(env, model, args, commit_seconds=1.0) as running:
        assert running.stream.stdin is not None
        feed = lat.Feed(running.stream.stdin, t0=history[-1].timestamp + 1)
        stop = threading.Event()
        busy = threading.Thread(target=lat.background, args=(feed, held_out, 100.0, stop), daemon=True)
        busy.start()
        try:
            served = lat.served_seconds(feed, running.rec_address, model, held_out[0].item, probes)
        finally:
            stop.set()
            busy.join()
        users = sorted({r.user for r in history})
        asked = lat.recommend_seconds(running.rec_address, model, [users[n % len(users)] for n in range(500)])
    ms = [s * 1000 for s in asked]
    return {
        "interaction_to_served_seconds": {
            "p50": round(lat.percentile(served, 50), 3),
            "p99": round(lat.percentile(served, 99), 3),
            "max": round(max(served), 3),
            "probes": len(served),
            "background_interactions_per_second": 100,
        },
        "recommend_grpc_ms_k10_all_items": {
            "p50": round(lat.percentile(ms, 50), 2),
            "p99": round(lat.percentile(ms, 99), 2),
            "calls": len(ms),
            "items": len({r.item for r in history}),
        },
    }


if __name__ == "__main__":
    main()
