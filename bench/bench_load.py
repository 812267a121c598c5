"""Cold start of a serving worker against transformers loading the same weights, each in a fresh process:
seconds from starting the process to its first answer, and the process's peak RSS. Interleaved, medians of 3.

- llmk: a worker process opens the embedded store (SQLite and the object dir SmolLM2 was committed to),
  builds SmolLM2 from it (`Host.load`, what a new worker does) and answers one classify request;
- transformers: `AutoModelForCausalLM.from_pretrained` on a folder holding the same weights as one safetensors
  file (its fastest path), then the same classify as one forward with last-position logits.

Both count interpreter start and imports; both run 2 threads. Goals (issue 10): ready in under 5 s, peak RSS
no more than transformers'. The machine is shared: each process's CPU seconds and the load average before and
after are reported beside the wall time, so a run on a busy machine can be read for what it is.

python -m bench.bench_load
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import write

ROUNDS = 3
THREADS = 2
TEMPLATE = "Is the sentiment of this financial news negative, positive or neutral?\nNews: {text}\nSentiment:"
LABELS = ["negative", "positive", "neutral"]
HEADLINE = "Bank files for bankruptcy after massive loan losses"


def _settings(home: Path):  # unannotated: llmk.config is imported in the child, after the clock starts
    from llmk.config import Settings

    return Settings(home=home, device="cpu", version_poll_seconds=0, classify_template=TEMPLATE)


def prepare(root: Path) -> tuple[Path, Path]:
    """A store home with SmolLM2 committed, and a transformers folder with the same weights."""
    from bench.bench_peers import hf_folder
    from llmk.bootstrap import Deployment
    from llmk.domain.versions import CommitInfo
    from services.store.adapters.importers import load_source

    imported = load_source("smollm2")
    home, folder = root / "home", root / "hf"
    folder.mkdir()
    store = Deployment(_settings(home)).local_store()
    store.create_model("smollm2", imported.tensors, imported.config, imported.files, CommitInfo())
    hf_folder(imported, folder)
    return home, folder


def serve_llmk(home: Path) -> list[float]:
    from llmk.bootstrap import Deployment
    from services.inference.usecases.host import Host

    settings = _settings(home)
    host = Host(settings, Deployment(settings).local_store())
    host.load("smollm2")
    scores = host.classify([HEADLINE], LABELS).results[0].probabilities
    return [scores[label] for label in LABELS]


def serve_transformers(folder: Path) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer.encode(TEMPLATE.format(text=HEADLINE))])
    label_ids = [tokenizer.encode(" " + label, add_special_tokens=False)[0] for label in LABELS]
    with torch.no_grad():
        logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1]
    return logits[label_ids].softmax(-1).tolist()


def child(engine: str, path: Path) -> None:
    """Runs in the measured process: load, answer, then report the answer and the peak RSS on stdout."""
    import torch

    torch.set_num_threads(THREADS)
    scores = serve_llmk(path) if engine == "llmk" else serve_transformers(path)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"scores": scores, "rss_mib": rss_mib}), flush=True)


def measure(engine: str, path: Path) -> dict[str, Any]:
    cpu_before = _children_cpu()
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.bench_load", "--child", engine, str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_env())
    seconds = time.perf_counter() - start  # the child exits right after answering
    report = json.loads(out.stdout.strip().splitlines()[-1])
    cpu = _children_cpu() - cpu_before
    return {"ready_s": seconds, "cpu_s": cpu, "rss_mib": report["rss_mib"], "scores": report["scores"]}


def _children_cpu() -> float:
    """User + system seconds of this process's finished children (one child runs at a time)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(THREADS)}


def main() -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="llmk-bench-load-") as tmp:
        # In a process of its own: a child inherits its parent's peak RSS, which must stay small here.
        subprocess.run([sys.executable, "-m", "bench.bench_load", "--prepare", tmp], check=True, env=_env())
        home, folder = Path(tmp) / "home", Path(tmp) / "hf"
        runs: dict[str, list[dict[str, Any]]] = {"llmk": [], "transformers": []}
        for _ in range(ROUNDS):
            runs["llmk"].append(measure("llmk", home))
            runs["transformers"].append(measure("transformers", folder))
    load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    med = {
        e: {k: statistics.median(r[k] for r in rs) for k in ("ready_s", "cpu_s", "rss_mib")}
        for e, rs in runs.items()
    }
    drift = max(
        abs(a - b) for a, b in zip(runs["llmk"][0]["scores"], runs["transformers"][0]["scores"], strict=True)
    )
    ours, peer = med["llmk"], med["transformers"]
    rows = [
        {
            "metric": "load to ready: a worker process builds SmolLM2 from the store, to its first answer",
            "value": ours["ready_s"],
            "unit": "s",
            "baseline": f"transformers from_pretrained (safetensors folder) to the same answer "
            f"{peer['ready_s']:.3g} s; max prob diff {drift:.1e}; each a fresh process; CPU s "
            f"{ours['cpu_s']:.3g} vs {peer['cpu_s']:.3g}; {load}",
            "ratio": round(peer["ready_s"] / ours["ready_s"], 2),
            "goal": f"< 5 s: {'met' if ours['ready_s'] < 5 else 'missed'}",
        },
        {
            "metric": "peak RSS of that serving worker process",
            "value": ours["rss_mib"],
            "unit": "MiB",
            "baseline": f"transformers process, same model and answer {peer['rss_mib']:.4g} MiB",
            "ratio": round(peer["rss_mib"] / ours["rss_mib"], 2),
            "goal": f"<= transformers': {'met' if ours['rss_mib'] <= peer['rss_mib'] else 'missed'}",
        },
    ]
    write("load", rows, "python -m bench.bench_load")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], Path(sys.argv[3]))
    elif sys.argv[1:2] == ["--prepare"]:
        prepare(Path(sys.argv[2]))
    else:
        main()
