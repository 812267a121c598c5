"""The finance monitor's cost beyond the model, on the real SmolLM2-135M.

- monitor throughput: tweets through `Monitor` (the inference queue, an in-process worker, every score
  stored in the database, moods and alerts) against the bare batched classify of the same tweets by the
  same served model (`Host.classify`, 16 texts a call), interleaved, medians of 3 rounds. Goal >= 0.9x.

python -m bench.bench_monitor
"""

from __future__ import annotations

import csv
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import write
from llmk.adapters.db import make_engine
from llmk.adapters.importers import load_source
from llmk.adapters.migrate import upgrade
from llmk.adapters.monitor_db import MonitorDb
from llmk.app.model_task import TASK_KEY, encode_task, packaged
from llmk.app.monitor import Monitor, MonitorConfig
from llmk.app.store import CommitInfo
from llmk.app.stream import Item
from llmk.bus.inference_queue import QueuedClassifier, make_app
from llmk.client import LocalStoreClient
from llmk.config import Settings
from llmk.data import FINANCE_NEWS
from llmk.wiring import open_store
from services.inference.main import embedded_worker

ITEMS, ROUNDS, BATCH = 256, 3, 16


def tweets() -> list[str]:
    with (FINANCE_NEWS / "train.csv").open(newline="", encoding="utf-8") as f:
        return [r["text"] for r in csv.DictReader(f)][:ITEMS]


def main() -> None:
    texts = tweets()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(home=Path(tmp), device="cpu", version_poll_seconds=0, max_wait_ms=5.0)
        store = LocalStoreClient(open_store(settings))
        imported = load_source("smollm2")
        metadata = {TASK_KEY: encode_task(packaged("sentiment"))}
        store.create_model(
            "smol", imported.tensors, imported.config, imported.files, CommitInfo(metadata=metadata)
        )
        engine = make_engine(settings.sqlalchemy_url)
        upgrade(engine)
        app = make_app(settings)
        with embedded_worker(settings, app, "smol", None) as host:
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
    b, p = statistics.median(bare), statistics.median(piped)
    write(
        "monitor",
        [
            {
                "metric": f"monitor: {ITEMS} tweets through the queue, stored and watched",
                "value": round(p, 2),
                "unit": "items/s",
                "baseline": f"bare batched classify of the same tweets {b:.1f} items/s",
                "ratio": round(p / b, 3),
                "goal": ">= 0.9x",
            }
        ],
        "python -m bench.bench_monitor",
    )


if __name__ == "__main__":
    main()
