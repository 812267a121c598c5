"""llmk's inference engine on one GPU, in bf16: decode tokens/s against the bandwidth bound of the weights,
classify items/s, hot-apply latency. bench/gpu.sh runs it on an H200; `--device cpu --preset tiny` runs the
same code anywhere as a smoke test.

The weights are random with each preset's shapes: speed does not depend on their values, and the GPU machine
has neither the store nor the SmolLM2 package. The tokenizer is SmolLM2's where `--model DIR` names a
folder written by `--export DIR` on a machine that has it, else one token per UTF-8 byte. The bound: a decode
step reads every weight once, so at batch 1 no engine beats (HBM bandwidth / weight bytes) tokens/s; the
bandwidth is a device-to-device copy measured in the same run. Hot apply: a version setting 1% of every
tensor's values (sparse, exact anywhere), patched into the served weights in place and checked, as a worker
does.

python -m bench.bench_gpu [--device cuda] [--preset smollm2-135m,llama-1b] [--model DIR] [--out FILE]
python -m bench.bench_gpu --export DIR
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, write
from llmk.domain.deltas import Delta, Kind
from services.inference.engine.batcher import ClassifyBatcher
from services.inference.engine.config import ModelConfig
from services.inference.engine.model import Model, build_model
from services.inference.usecases.patching import apply_in_place

_LLAMA = {"model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 1024},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                     "max_position_embeddings": 8192, "rope_theta": 100000.0},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                 "max_position_embeddings": 8192, "rope_theta": 500000.0},
}  # fmt: skip
TEMPLATE = (
    "Is the sentiment of this financial news negative, positive or neutral?\nNews: {prompt}\nSentiment:"
)
LABELS = ["negative", "positive", "neutral"]
NEWS = [
    "Company reports record quarterly profits",
    "Bank files for bankruptcy",
    "Rates unchanged",
    "Jobs cut",
]
PROMPT_TOKENS, NEW_TOKENS = 128, 64


class ByteTokenizer:
    """One token per UTF-8 byte: all the classifier needs is `encode`."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode())


def random_model(config: dict[str, Any], device: torch.device) -> Model:
    """The preset's shapes in bf16 on `device` (fp32 on the CPU), small random weights, norms at one."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Model(ModelConfig.from_hf(config)).state_dict().items()}
    g = torch.Generator(device).manual_seed(0)
    tensors = {
        k: torch.ones(s, device=device, dtype=dtype)
        if k.endswith("norm.weight")
        else (torch.randn(s, device=device, dtype=dtype, generator=g) * 0.02)
        for k, s in shapes.items()
    }
    return build_model(config, tensors, device, dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes per second a device-to-device copy moves, counting the bytes read and the bytes written."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    start, n = time.perf_counter(), 10
    for _ in range(n):
        dst.copy_(src)
    sync(device)
    return 2 * nbytes * n / (time.perf_counter() - start)


def decode_rate(model: Model, batch: int, device: torch.device) -> float:
    """Greedy decode tokens/s of `batch` sequences after a PROMPT_TOKENS prompt each (prefill not timed)."""
    model.setup_cache(batch, PROMPT_TOKENS + NEW_TOKENS + 1)
    slots = list(range(batch))
    prompts = torch.randint(0, model.config.vocab_size, (batch, PROMPT_TOKENS)).tolist()
    with torch.no_grad():
        tokens = model.prefill_batch(slots, prompts).argmax(-1)
        for _ in range(3):  # warm-up steps, then the cache is reset to the prompt
            model.decode_step(slots, tokens)
        for s in slots:
            model.cache.lengths[s] = PROMPT_TOKENS  # type: ignore[union-attr]
        sync(device)
        start = time.perf_counter()
        for _ in range(NEW_TOKENS):
            tokens = model.decode_step(slots, tokens).argmax(-1)
        sync(device)
    return batch * NEW_TOKENS / (time.perf_counter() - start)


def classify_rate(model: Model, tokenizer: Any, batch: int, items: int) -> float:
    texts = [f"{NEWS[i % len(NEWS)]} ({i})" for i in range(items)]
    batcher = ClassifyBatcher(model, tokenizer, max_batch_size=batch, max_wait_ms=0)
    try:
        for _ in range(2):  # warm-up, and the template's prefix computed once
            batcher.submit(texts[:batch], LABELS, TEMPLATE).result()
        start = time.perf_counter()
        futures = [batcher.submit(texts[i : i + batch], LABELS, TEMPLATE) for i in range(0, items, batch)]
        for f in futures:
            f.result()
        return items / (time.perf_counter() - start)
    finally:
        batcher.close()


def hot_apply_ms(model: Model, device: torch.device, versions: int) -> list[float]:
    """Milliseconds to patch a version setting 1% of every tensor's values, in place, checked."""
    named = dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)
    times = []
    for _ in range(versions):
        entries = {}
        for name, p in named.items():
            first = int(torch.randint(min(100, p.numel()), (1,), generator=g))  # every 100th value: unique
            idx = torch.arange(first, p.numel(), 100, dtype=torch.int32)
            values = torch.randn(idx.numel(), generator=g) * 0.02
            entries[name] = Delta(Kind.SPARSE_SET, {"indices": idx, "values": values})
        sync(device)
        start = time.perf_counter()
        for name, delta in entries.items():
            apply_in_place(model, name, delta)
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def preset_rows(
    name: str, config: dict[str, Any], tokenizer: Any, device: torch.device, a: Any
) -> list[dict]:
    model = random_model(config, device)
    weights = {id(p): p for p in model.parameters()}.values()
    nbytes = sum(p.numel() * p.element_size() for p in weights)
    bandwidth = copy_bandwidth(device, a.copy_bytes)
    bound = bandwidth / nbytes
    dtype = str(model.lm_head.weight.dtype).removeprefix("torch.")
    where = f"{name} ({nbytes / 2**20:.1f} MiB of {dtype} weights) on {_device_name(device)}"
    rows = []
    for batch in a.batches:
        rate = decode_rate(model, batch, device)
        rows.append(
            {
                "metric": f"decode, batch {batch}, {where}",
                "value": rate,
                "unit": "tokens/s",
                "baseline": f"bandwidth bound {bound * batch:.4g} tokens/s (weights read once per step at "
                f"{bandwidth / 1e9:.0f} GB/s, a device copy measured in this run)",
                "ratio": round(rate / (bound * batch), 3),
                "goal": "(reported)",
            }
        )
    rate = classify_rate(model, tokenizer, a.classify_batch, a.classify_items)
    rows.append(
        {
            "metric": f"classify, batches of {a.classify_batch}, 3 labels, prefix cached, {where}",
            "value": rate,
            "unit": "items/s",
            "baseline": f"{a.classify_items} items; tokenizer {type(tokenizer).__name__}",
            "goal": "(reported)",
        }
    )
    ms = hot_apply_ms(model, device, a.versions)
    rows.append(
        {
            "metric": f"hot apply, a version setting 1% of every tensor, in place and checked, {where}",
            "value": statistics.median(ms),
            "unit": "ms",
            "baseline": f"max {max(ms):.1f} ms over {len(ms)} versions",
            "goal": "(reported)",
        }
    )
    return rows


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"


def export(folder: Path) -> None:
    """SmolLM2's config and tokenizer files (a few MB, no weights), for a machine without the package."""
    from services.store.adapters.importers import load_source

    imported = load_source("smollm2")
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in imported.files.items():
        (folder / name).write_bytes(data)
    (folder / "config.json").write_text(json.dumps(imported.config, default=str))
    print(f"wrote {sorted(p.name for p in folder.iterdir())} to {folder}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="smollm2-135m,llama-1b", help=f"comma-separated: {', '.join(PRESETS)}")
    p.add_argument("--model", type=Path, help="a folder from --export: SmolLM2's tokenizer (and its shapes)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64])
    p.add_argument("--classify-batch", type=int, default=64)
    p.add_argument("--classify-items", type=int, default=2048)
    p.add_argument("--versions", type=int, default=5)
    p.add_argument("--copy-bytes", type=int, default=2**31)
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    p.add_argument("--export", type=Path, help="write SmolLM2's config and tokenizer files here, and stop")
    a = p.parse_args()
    if a.export:
        return export(a.export)
    device = torch.device(a.device)
    tokenizer: Any = ByteTokenizer()
    presets = {n: {**_LLAMA, **PRESETS[n]} for n in a.preset.split(",")}
    if a.model:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(a.model)
        if "smollm2-135m" in presets:
            presets["smollm2-135m"] = json.loads((a.model / "config.json").read_text())
    rows = [r for name, config in presets.items() for r in preset_rows(name, config, tokenizer, device, a)]
    write(a.out.stem, rows, "bash bench/gpu.sh", folder=a.out.parent)


if __name__ == "__main__":
    main()
