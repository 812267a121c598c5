"""The finance monitor's cost beyond the model, on the real SmolLM2-135M.

- monitor throughput: tweets through `Monitor` (the inference queue, an in-process worker, every score
  stored in the database, moods and alerts) against the bare batched classify of the same tweets by the
  same served model (`Host.classify`, 16 texts a call), interleaved, medians of 3 rounds. Goal >= 0.9x.
- scaling: the monitor over RabbitMQ with 2 `llmk serve inference --worker` processes against 1.

python -m bench.bench_monitor
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import write
from llmk.bootstrap import Deployment
from llmk.cli.processes import TierProcesses
from llmk.config import Settings
from llmk.data import FINANCE_NEWS
from llmk.domain.task_spec import TASK_KEY, encode_task, packaged
from llmk.domain.versions import CommitInfo
from llmk.platform.database import make_engine
from llmk.platform.migrate import upgrade
from services.inference.main import embedded_worker
from services.inference.queue.client import QueuedClassifier
from services.monitor.adapters.tables import MonitorDb
from services.monitor.usecases.items import Item
from services.monitor.usecases.monitor import Monitor, MonitorConfig
from services.store.adapters.importers import load_source

ITEMS, ROUNDS, BATCH = 256, 3, 16
AMQP = os.environ.get("LLMK_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def tweets() -> list[str]:
    with (FINANCE_NEWS / "train.csv").open(newline="", encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)][:ITEMS]


def main() -> None:
    texts = tweets()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), device="cpu", version_poll_seconds=0, max_wait_ms=5.0)
        store = Deployment(settings).local_store()
        imported = load_source("smollm2")
        metadata = {TASK_KEY: encode_task(packaged("sentiment"))}
        store.create_model(
            "smol", imported.tensors, imported.config, imported.files, CommitInfo(metadata=metadata)
        )
        engine = make_engine(settings.sqlalchemy_url)
        upgrade(engine)
        app = Deployment(settings).inference_queue()
        with embedded_worker(Deployment(settings), app, "smol", None) as host:
            host.classify(texts[:BATCH])  # warm up
            bare, piped = [], []
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                for i in range(0, len(texts), BATCH):
                    host.classify(texts[i : i + BATCH])
                bare.append(len(texts) / (time.perf_counter() - t0))
                monitor = Monitor(
                    MonitorDb(engine), QueuedClassifier(app, "smol"), MonitorConfig("smol"), "bench"
                )
                run = uuid.uuid4().hex[:8]
                t0 = time.perf_counter()
                summary = monitor.run(Item(f"{run}-{i}", t) for i, t in enumerate(texts))
                piped.append(summary.scored / (time.perf_counter() - t0))
        scaling = [distributed(settings, texts, n) for n in (1, 2)]
    b, p = statistics.median(bare), statistics.median(piped)
    write(
        "monitor",
        [
            {
                "metric": f"monitor over RabbitMQ: 2 inference worker processes against 1 ({ITEMS} tweets)",
                "value": round(scaling[1], 2),
                "unit": "items/s",
                "baseline": f"1 worker process {scaling[0]:.1f} items/s",
                "ratio": round(scaling[1] / scaling[0], 3),
                "goal": "(reported; 2 cores: under 2x)",
            },
            {
                "metric": f"monitor: {ITEMS} tweets through the queue, stored and watched",
                "value": round(p, 2),
                "unit": "items/s",
                "baseline": f"bare batched classify of the same tweets {b:.1f} items/s",
                "ratio": round(p / b, 3),
                "goal": ">= 0.9x",
            },
        ],
        "python -m bench.bench_monitor",
    )


def distributed(settings: Settings, texts: list[str], workers: int) -> float:
    """Items/s of the monitor with `workers` `llmk serve inference --worker` processes on RabbitMQ."""
    queue = f"bench-monitor-{uuid.uuid4().hex[:8]}"
    env = {"LLMK_HOME": str(settings.home), "LLMK_BROKER_URL": AMQP, "LLMK_INFERENCE_QUEUE": queue}
    env |= {
        "LLMK_SERVE_MODEL": "smol",
        "LLMK_INFERENCE_WORKER": "1",
        "LLMK_DEVICE": "cpu",
        "LLMK_MAX_WAIT_MS": "5",
    }
    remote = settings.model_copy(update={"broker_url": AMQP, "inference_queue": queue})
    engine = make_engine(settings.sqlalchemy_url)
    with TierProcesses(settings, settings.home / f"logs-{workers}") as tiers:
        for i in range(workers):
            tiers.start("inference", f"inference-{i}", **env)
        app = Deployment(remote).inference_queue()
        scoring = QueuedClassifier(app, "smol")
        scoring.submit(texts[:1]).result(300)  # warm: every worker is consuming
        run = uuid.uuid4().hex[:8]
        monitor = Monitor(MonitorDb(engine), scoring, MonitorConfig("smol"), run)
        t0 = time.perf_counter()
        summary = monitor.run(Item(f"{run}-{i}", t) for i, t in enumerate(texts))
        return summary.scored / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
