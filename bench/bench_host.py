"""Which llmk is measured: the bare engine (build_model + Generator / ClassifyBatcher, as bench_peers drives
it) against the path users take (Deployment(...).inference(...): a Host in this process), on the same
SmolLM2-135M weights and workload, interleaved in one run, medians of ROUNDS rounds.

Also how much CPU the process burns while idle right after a request (OpenMP threads that spin steal the
shared cores from everything else on the host).

python -m bench.bench_host
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.bench_peers import BATCH, ITEMS, LABELS, NEW_TOKENS, PROMPTS, TEMPLATE, THREADS
from bench.common import write
from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.versions import CommitInfo
from services.inference.engine import compute
from services.inference.engine.batcher import ClassifyBatcher
from services.inference.engine.generator import Generator, Request
from services.inference.engine.model import build_model
from services.inference.interface import Finished, GenerateRequest, InferenceClient
from services.inference.usecases.loading import eos_ids
from services.store.adapters.importers import load_source

ROUNDS = int(os.environ.get("LLMK_BENCH_ROUNDS", "3"))
WORK = os.environ.get("LLMK_BENCH_WORK", "gen16,gen1,classify").split(",")  # a subset, to look closer


class PerStepGenerator(Generator):
    """The generator as it was before: one hand-off to the compute thread per decode step."""

    def _run_steps(self) -> None:
        self._run_step()


def bare(imported: Any, tokenizer: Any, kind: type[Generator] = Generator) -> dict[str, Callable[[], int]]:
    model = compute.run(build_model, imported.config, imported.tensors)
    eos = eos_ids(imported.config, tokenizer)
    generator = kind(model, tokenizer, max_active=BATCH, max_seq_len=256, eos_token_ids=eos)
    batcher = ClassifyBatcher(model, tokenizer, max_batch_size=BATCH, max_wait_ms=0)

    def generate(n: int) -> int:
        streams = [generator.submit(Request(p, chat=True, max_tokens=NEW_TOKENS)) for p in PROMPTS[:n]]
        return sum(len(s.result().token_ids) for s in streams)

    def classify() -> int:
        for i in range(0, len(ITEMS), BATCH):
            batcher.submit(ITEMS[i : i + BATCH], LABELS, TEMPLATE).result()
        return len(ITEMS)

    return {"gen16": lambda: generate(16), "gen1": lambda: generate(1), "classify": classify}


def hosted(client: InferenceClient) -> dict[str, Callable[[], int]]:
    """The user path: each stream read to its end by a thread of its own, as 16 callers would."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(BATCH)

    def one(prompt: str) -> int:
        for item in client.generate(GenerateRequest(prompt, max_tokens=NEW_TOKENS, chat=True)):
            if isinstance(item, Finished):
                return item.completion_tokens
        return 0

    def generate(n: int) -> int:
        return sum(pool.map(one, PROMPTS[:n]))

    def classify() -> int:
        for i in range(0, len(ITEMS), BATCH):
            client.classify(ITEMS[i : i + BATCH], LABELS, TEMPLATE)
        return len(ITEMS)

    return {"gen16": lambda: generate(16), "gen1": lambda: generate(1), "classify": classify}


def idle_cpu(seconds: float = 1.0) -> float:
    """CPU seconds this process used per second of wall time while it had nothing to do."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(seconds)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds


def run(paths: dict[str, dict[str, Callable[[], int]]]) -> tuple[dict[tuple[str, str], float], list[float]]:
    """Units per second of each path on each workload, paths taking turns within each round."""
    rates: dict[tuple[str, str], list[float]] = {}
    idle: list[float] = []
    for fns in paths.values():  # warm-up
        for work in WORK:
            fns[work]()
    order = list(paths.items())
    for _ in range(ROUNDS):
        for work in WORK:
            for path, fns in order:
                start = time.perf_counter()
                units = fns[work]()
                rates.setdefault((path, work), []).append(units / (time.perf_counter() - start))
                idle.append(idle_cpu(0.5))
        order.reverse()  # the order alternates, so neither path always runs right after the other
    return {k: statistics.median(v) for k, v in rates.items()}, idle


def main() -> None:
    load_before = os.getloadavg()[0]
    torch.set_num_threads(THREADS)
    home = Path(tempfile.mkdtemp(prefix="llmk-bench-host-"))
    settings = Settings(home=home, max_sequences=BATCH, version_poll_seconds=30.0)
    deployment = Deployment(settings)
    imported = compute.run(load_source, "smollm2")
    deployment.store().create_model(
        "smollm2", imported.tensors, imported.config, imported.files, CommitInfo()
    )
    client = deployment.inference("smollm2", None, shared=True)
    tokenizer = client.host._served.tokenizer  # type: ignore[attr-defined]
    paths = {
        "bare engine": bare(imported, tokenizer),
        "Host": hosted(client),
        "bare engine, a hand-off per step": bare(imported, tokenizer, PerStepGenerator),
    }
    rates, idle = run(paths)
    client.close()
    units = {"gen16": "tok/s", "gen1": "tok/s", "classify": "items/s"}
    names = {
        "gen16": f"generate {BATCH} streams x {NEW_TOKENS}",
        "gen1": f"generate 1 stream x {NEW_TOKENS}",
        "classify": f"classify {len(ITEMS)} headlines in requests of {BATCH}",
    }
    rows = [
        {
            "metric": f"{names[w]} through Host (Deployment.inference), {THREADS} threads",
            "value": rates[("Host", w)],
            "unit": units[w],
            "baseline": f"bare engine (build_model + Generator) {rates[('bare engine', w)]:.3g}",
            "ratio": round(rates[("Host", w)] / rates[("bare engine", w)], 3),
            "goal": ">= 0.95x",
        }
        for w in names
        if w in WORK
    ]
    rows += [
        {
            "metric": f"{names[w]}, bare engine: steps back to back on the compute thread",
            "value": rates[("bare engine", w)],
            "unit": units[w],
            "baseline": f"a hand-off per step (before) {rates[('bare engine, a hand-off per step', w)]:.3g}",
            "ratio": round(rates[("bare engine", w)] / rates[("bare engine, a hand-off per step", w)], 3),
            "goal": "(reported)",
        }
        for w in names
        if w in WORK and w != "classify"
    ]
    rows.append(
        {
            "metric": "CPU used while idle right after a request (OpenMP spin), CPU s per s",
            "value": statistics.median(idle),
            "unit": f"(max {max(idle):.2f})",
            "goal": "(reported)",
        }
    )
    rows.append(
        {
            "metric": "load average during this run (context for the timings above)",
            "value": os.getloadavg()[0],
            "unit": f"(1 min; {load_before:.1f} at start; {os.cpu_count()} CPUs; {cpu_model()})",
            "goal": "(reported)",
        }
    )
    write("host", rows, "python -m bench.bench_host")


def cpu_model() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?"
    )
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {isa}"


if __name__ == "__main__":
    main()
