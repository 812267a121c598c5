"""Inference benchmarks on the real SmolLM2-135M on this machine's CPU, each against a baseline measured in
the same run.

- classification: 16 concurrent clients through the dynamic batcher vs a plain transformers forward, one
  request at a time (the request's three label continuations as one padded batch);
- generation: 16 concurrent greedy streams of up to 64 tokens through continuous batching vs transformers
  `generate` one prompt at a time (tokens per second; both make the same tokens and stop at the same end);
- hot apply: a version changing 1% of the parameters, commit to the first answer served on it (p50 and
  p99), the change spread over the last 4 layers' MLPs (where fine-tuning lands) and over every tensor;
  store, worker and committer share one process here (embedded SQLite and in-process events).

Every torch computation, the baselines' and the store's included, runs on the worker's compute thread
(services/inference/engine/compute.py), as it does in a serving worker.

python -m bench.bench_inference [--hot]   (--hot: only the hot-apply rows, the others kept from the last run)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, write
from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.domain.deltas import Delta, Kind
from llmk.domain.versions import CommitInfo
from services.inference.engine import compute
from services.inference.engine.generator import Request
from services.inference.usecases.host import Host
from services.store.adapters.importers import load_source, smollm2_path
from services.store.usecases.store import Store

CLIENTS = 16
LABELS = ["positive", "negative", "neutral"]
TEMPLATE = "Financial headline: {text}\nThe sentiment of this headline (positive, negative or neutral) is:"
HEADLINES = [
    "Company reports record quarterly profits, shares jump 12%",
    "Bank files for bankruptcy after massive loan losses",
    "Central bank keeps interest rates unchanged",
    "Retailer cuts 5,000 jobs as sales slump",
    "Oil prices rise on supply concerns",
    "Tech giant beats earnings estimates",
    "Regulator fines lender over compliance failures",
    "Shares flat ahead of the annual meeting",
]
PROMPTS = [f"Write a detailed essay about {topic}." for topic in ("bonds", "stocks", "gold", "tax")]
NEW_TOKENS = 64
HOT_RUNS = 15


def transformers_model() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def hf_classify(model: Any, tokenizer: Any, text: str) -> list[float]:
    """The baseline: one request, its label continuations right-padded into one forward pass."""
    context = tokenizer.encode(TEMPLATE.format(text=text))
    rows = [context + tokenizer.encode(" " + label, add_special_tokens=False) for label in LABELS]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    scores = [
        sum(float(logp[i, p - 1, row[p]]) for p in range(len(context), len(row)))
        for i, row in enumerate(rows)
    ]
    return torch.tensor(scores).softmax(-1).tolist()


def concurrently(n_clients: int, per_client: int, call: Any) -> float:
    """Seconds for n_clients threads to make per_client calls each."""
    threads = [
        threading.Thread(target=lambda c=c: [call(c * per_client + i) for i in range(per_client)])
        for c in range(n_clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def classification(host: Host, model: Any, tokenizer: Any) -> dict[str, Any]:
    host.classify(HEADLINES[:2], LABELS)  # warm up both paths
    compute.run(hf_classify, model, tokenizer, HEADLINES[0])
    n_base = 16
    start = time.perf_counter()
    for i in range(n_base):
        compute.run(hf_classify, model, tokenizer, HEADLINES[i % len(HEADLINES)])
    baseline = n_base / (time.perf_counter() - start)
    per_client = 4
    seconds = concurrently(
        CLIENTS, per_client, lambda i: host.classify([HEADLINES[i % len(HEADLINES)]], LABELS)
    )
    ours = CLIENTS * per_client / seconds
    return {
        "metric": f"classify throughput, {CLIENTS} concurrent clients, dynamic batching",
        "value": ours,
        "unit": "requests/s",
        "baseline": f"transformers forward one request at a time {baseline:.3g} requests/s",
        "ratio": round(ours / baseline, 2),
        "goal": ">= 4x",
    }


def generation(host: Host, model: Any, tokenizer: Any) -> dict[str, Any]:
    start, made = time.perf_counter(), 0
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            out = compute.run(model.generate, ids, do_sample=False, max_new_tokens=NEW_TOKENS)
        made += out.shape[1] - ids.shape[1]
    baseline = made / (time.perf_counter() - start)
    tokens = [0] * CLIENTS

    def stream(i: int) -> None:
        request = Request(PROMPTS[i % len(PROMPTS)], chat=True, max_tokens=NEW_TOKENS)  # greedy
        tokens[i] = host.generate(request).result().completion_tokens

    seconds = concurrently(CLIENTS, 1, stream)
    ours = sum(tokens) / seconds
    return {
        "metric": f"generate throughput, {CLIENTS} concurrent streams of {NEW_TOKENS} tokens",
        "value": ours,
        "unit": "tokens/s",
        "baseline": f"sequential transformers generate {baseline:.3g} tokens/s; {sum(tokens)} tokens made",
        "ratio": round(ours / baseline, 2),
        "goal": ">= 3x",
    }


def sparse_version(tensors: dict[str, torch.Tensor], names: list[str], seed: int) -> dict[str, Delta]:
    """1% of all the model's parameters, spread over `names`, each moved a little."""
    total = sum(t.numel() for t in tensors.values())
    per_tensor = max(1, total // 100 // len(names))
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        # ascending, as the optimizer sends them
        idx = torch.randperm(tensors[name].numel(), generator=g)[:per_tensor].sort().values.to(torch.int32)
        out[name] = Delta(Kind.SPARSE, {"indices": idx, "values": torch.randn(len(idx), generator=g) * 1e-3})
    return out


def hot_apply(
    host: Host, store: Store, tensors: dict[str, torch.Tensor], names: list[str]
) -> tuple[list[float], list[float]]:
    """Milliseconds from the commit call, and from its return (the worker's part), to the first answer tagged
    with the new version; the probe is a one-token answer to a one-word prompt, so the figure is the update's
    propagation, not a long answer."""
    probe = Request("Hi", max_tokens=1)
    total, worker = [], []
    for i in range(HOT_RUNS):
        change = compute.run(sparse_version, tensors, names, i)
        start = time.perf_counter()
        v = compute.run(store.commit, "smollm2", change, info=CommitInfo(message=f"1% sparse {i}"))
        committed = time.perf_counter()
        while host.generate(probe).result().version != v.id:
            pass
        total.append((time.perf_counter() - start) * 1000)
        worker.append((time.perf_counter() - committed) * 1000)
    return total, worker


def hot_rows(host: Host, store: Store, tensors: dict[str, torch.Tensor], layers: int) -> list[dict]:
    mlps = [
        f"model.layers.{i}.mlp.{p}.weight"
        for i in range(layers - 4, layers)
        for p in ("gate_proj", "up_proj", "down_proj")
    ]
    rows = []
    for label, names, goal in (
        ("last 4 layers' MLPs", mlps, "p50 < 200 ms"),
        ("every tensor", sorted(tensors), "p50 < 500 ms, p99 < 1000 ms"),
    ):
        total, worker = hot_apply(host, store, tensors, names)
        ms = sorted(total)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        rows.append(
            {
                "metric": f"hot apply of a 1%-sparse version ({label}), commit returned to first answer "
                "(the worker's part), p50, one process",
                "value": statistics.median(worker),
                "unit": "ms",
                "baseline": f"max {max(worker):.0f} ms over {len(worker)}",
                "goal": "(reported)",
            }
        )
        rows.append(
            {
                "metric": f"hot apply of a 1%-sparse version ({label}), commit to first answer, p50, "
                "one process",
                "value": statistics.median(ms),
                "unit": "ms",
                "baseline": f"p99 {p99:.0f} ms, min {ms[0]:.0f} ms over {len(ms)}",
                "goal": goal,
            }
        )
    return rows


def main() -> None:
    hot_only = "--hot" in sys.argv[1:]
    home = Path(tempfile.mkdtemp(prefix="llmk-bench-inference-"))
    settings = Settings(
        home=home,
        device="cpu",
        max_sequences=CLIENTS,
        max_context_tokens=256,
        max_batch_size=CLIENTS,
        max_wait_ms=10.0,
        classify_template=TEMPLATE,
        version_poll_seconds=0,
    )
    imported = compute.run(load_source, "smollm2")
    store = Deployment(settings).local_store()
    compute.run(
        store.create_model, "smollm2", imported.tensors, imported.config, imported.files, CommitInfo()
    )
    torch.set_num_threads(torch.get_num_threads())
    host = Host(settings, store, Deployment(settings).events())
    host.load("smollm2")
    try:
        if hot_only:
            kept = json.loads((RESULTS / "inference.json").read_text())["rows"]
            rows = [r for r in kept if not r["metric"].startswith("hot apply")]
        else:
            model, tokenizer = compute.run(transformers_model)
            rows = [classification(host, model, tokenizer), generation(host, model, tokenizer)]
        rows += hot_rows(host, store, imported.tensors, imported.config["num_hidden_layers"])
    finally:
        host.close()
    write("inference", rows, "python -m bench.bench_inference" + (" --hot" if hot_only else ""))


if __name__ == "__main__":
    main()
