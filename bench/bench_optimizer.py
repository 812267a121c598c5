"""Optimizer benchmarks on the real SmolLM2-135M, each against a baseline measured in the same run.

- step time and bytes committed per step: top-k 1% against dense commits (same data, same steps);
- macro-F1 on a sample of valid.csv after the same examples: top-k 1% gain as a share of the dense gain;
- feedback submitted to the version event the inference workers act on, through a real worker.

python -m bench.bench_optimizer
"""

from __future__ import annotations

import csv
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import write
from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.data import FINANCE_NEWS
from llmk.domain.optim import OptimizerSpec
from llmk.domain.task_spec import TASKS
from llmk.platform.queue_workers import InProcessWorker
from services.optimizer.interface import Example, Job, JobSpec
from services.optimizer.main import Runtime, wire
from services.optimizer.usecases.feedback import load_trainer
from services.optimizer.usecases.training import JobRunner
from services.store.adapters.importers import load_source

DATA = FINANCE_NEWS
TASK = TASKS["sentiment"]
STEPS, BATCH, VALID, LATENCY_ROUNDS = 10, 16, 200, 3


def examples(name: str) -> list[Example]:
    with (DATA / name).open(newline="", encoding="utf-8") as f:
        return [Example(text=r["text"], label=TASK.labels[int(r["label"])]) for r in csv.DictReader(f)]


def balanced(rows: list[Example], n: int) -> list[Example]:
    by_label = {label: [e for e in rows if e.label == label] for label in TASK.labels}
    rng = random.Random(0)
    for group in by_label.values():
        rng.shuffle(group)
    return [by_label[label][i] for i in range(n // len(by_label) + 1) for label in TASK.labels][:n]


def start(rt: Runtime, branch: str, topk: float, data: list[Example]) -> str:
    rt.store.branch("smol", branch, "main")
    spec = JobSpec(
        model="smol", branch=branch, task=TASK, steps=STEPS, batch_size=BATCH, topk=topk,
        optimizer=OptimizerSpec(lr=2e-4),
    )  # fmt: skip
    job = rt.jobs.create_job(spec)
    rt.jobs.submit_feedback(job.id, data, f"{branch}-data")
    return job.id


def train_side_by_side(rt: Runtime, jobs: list[str]) -> list[float]:
    """Each job's median step time; steps alternate between the jobs, so both see the same machine load."""
    runners = [
        JobRunner(rt.runner.repo, rt.store, rt.runner.blobs, budget_seconds=0) for _ in jobs
    ]  # 1 step/run
    times: list[list[float]] = [[] for _ in jobs]
    for _ in range(STEPS):
        for runner, job_id, spent in zip(runners, jobs, times, strict=True):
            t0 = time.perf_counter()
            runner.run(job_id)
            spent.append(time.perf_counter() - t0)
    for runner, job_id in zip(runners, jobs, strict=True):
        runner.run(job_id)  # marks the job completed
    return [statistics.median(spent[1:]) for spent in times]  # the first step also loads the model


def latency(rt: Runtime, data: list[Example]) -> list[float]:
    """Seconds from a feedback submission to the version event of the step it completes."""
    rt.store.branch("smol", "online", "main")
    spec = JobSpec(
        model="smol", branch="online", task=TASK, batch_size=BATCH, optimizer=OptimizerSpec(lr=2e-4)
    )
    job = rt.jobs.create_job(spec)
    heard = threading.Event()
    unsubscribe = (
        Deployment(rt.deployment.settings)
        .events()
        .subscribe(lambda e: heard.set() if e["branch"] == "online" else None)
    )
    worker = InProcessWorker(rt.app, rt.deployment.settings.optimizer_queue).start()
    times = []
    try:
        for i in range(LATENCY_ROUNDS + 1):  # the first round also loads the model: not counted
            heard.clear()
            t0 = time.perf_counter()
            rt.jobs.submit_feedback(job.id, data[i * BATCH : (i + 1) * BATCH], f"round-{i}")
            if not heard.wait(600):
                raise RuntimeError("no version event within 600 s")
            times.append(time.perf_counter() - t0)
    finally:
        unsubscribe()
        worker.stop()
        rt.jobs.cancel_job(job.id)
    return times[1:]


def main() -> None:
    with tempfile.TemporaryDirectory() as home:
        rt = wire(Deployment(Settings(home=Path(home), optimizer_queue="optimizer-bench")))
        imported = load_source("smollm2")
        rt.store.create_model("smol", imported.tensors, imported.config, imported.files)
        data = balanced(examples("train.csv"), STEPS * BATCH)
        valid = random.Random(1).sample(examples("valid.csv"), VALID)
        jobs = [start(rt, "topk", 0.01, data), start(rt, "dense", 1.0, data)]
        sparse_step, dense_step = train_side_by_side(rt, jobs)
        sparse, dense = (rt.jobs.get_job(j) for j in jobs)
        names = sorted(sparse.tensors)
        scorer = load_trainer(rt.store, "smol", "main", TASK, names)
        f1 = {}
        for ref in ("main", "topk", "dense"):
            scorer.set_values(rt.store.fetch("smol", ref, names=names))
            f1[ref] = scorer.evaluate(valid)
        waits = latency(rt, data)
        rt.close()
    print(f"  macro-F1 on {VALID} valid rows: zero-shot {f1['main']:.4f}, top-k 1% {f1['topk']:.4f}, "
          f"dense {f1['dense']:.4f}")  # fmt: skip
    write(
        "optimizer",
        rows(sparse, dense, sparse_step, dense_step, f1, waits),
        "python -m bench.bench_optimizer",
    )


def rows(
    sparse: Job, dense: Job, sparse_step: float, dense_step: float, f1: dict[str, float], waits: list[float]
) -> list[dict[str, Any]]:
    sparse_bytes = statistics.mean(c.bytes for c in sparse.commits)
    dense_bytes = statistics.mean(c.bytes for c in dense.commits)
    dense_gain = f1["dense"] - f1["main"]
    gain = (f1["topk"] - f1["main"]) / dense_gain if dense_gain > 0 else float("nan")
    wait = statistics.median(waits)
    return [
        {"metric": "median step, top-k 1% commits (SmolLM2, 16 texts)", "value": sparse_step, "unit": "s",
         "baseline": f"dense {dense_step:.2f} s", "ratio": round(sparse_step / dense_step, 3)},
        {"metric": "bytes committed per step, top-k 1%", "value": sparse_bytes / 2**20, "unit": "MiB",
         "baseline": f"dense {dense_bytes / 2**20:.1f} MiB", "ratio": round(sparse_bytes / dense_bytes, 4)},
        {"metric": f"macro-F1 gain after {STEPS * BATCH} examples, top-k 1% / dense", "value": gain,
         "unit": "ratio", "baseline": f"dense gain {dense_gain:+.4f}", "ratio": round(gain, 3),
         "goal": ">= 0.95"},
        {"metric": "feedback submitted -> version event (worker step included)", "value": wait, "unit": "s",
         "baseline": f"direct step {sparse_step:.2f} s", "ratio": round(wait / sparse_step, 3)},
    ]  # fmt: skip


if __name__ == "__main__":
    main()
