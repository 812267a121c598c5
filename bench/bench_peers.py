"""llmk's inference engine against the engines a user would pick instead, on the same SmolLM2-135M weights,
the same prompts and the same thread count (2), interleaved, medians of 3 rounds.

- classify: 64 financial headlines in batches of 16, the monitor's template, 3 single-token labels, scored
  by next-token logits; llmk through its classify batcher (template prefix cached), and without the prefix;
  CTranslate2 with and without its static-prompt cache; transformers batched (left padded, last position);
- generate: 16 greedy streams of 64 tokens, and one stream alone; llmk's continuous batching, transformers
  `generate` on a left-padded batch, CTranslate2 `generate_batch`; greedy tokens compared with transformers.

Every torch engine (llmk's and transformers') runs on llmk's compute thread (services/inference/engine/
compute.py), so each works in the one OpenMP pool a serving worker uses; CTranslate2 has its own runtime.

Peers: CTranslate2 fp32 and int8 (`pip install -e .[bench]`); llama.cpp when llama-cpp-python is installed
(skipped with a note otherwise). The headline ratio of each workload is against its strongest fp32 peer
(llmk runs fp32 here); int8 figures are listed beside it.

python -m bench.bench_peers
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import write
from services.inference.engine import compute
from services.inference.engine.batcher import ClassifyBatcher
from services.inference.engine.classifier import classify
from services.inference.engine.compress import apply_options
from services.inference.engine.generator import Generator, Request
from services.inference.engine.model import Model, build_model
from services.store.adapters.importers import load_source

THREADS = 2
ROUNDS = 3
BATCH = 16
TEMPLATE = (
    "Is the sentiment of this financial news negative, positive or neutral?\nNews: {prompt}\nSentiment:"
)
LABELS = ["negative", "positive", "neutral"]
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
ITEMS = [f"{h} ({i})" for i, h in enumerate(HEADLINES * 8)]  # 64 distinct texts
TOPICS = ["bonds", "stocks", "gold", "tax", "banks", "oil", "rates", "housing"]
PROMPTS = [f"Write a detailed essay about {t}." for t in TOPICS * 2]  # 16 streams
NEW_TOKENS = 64
CT2_KINDS = ("float32", "int8")


class Engines:
    """Every engine loaded once, from one HF folder written from the same imported tensors."""

    def __init__(self, folder: Path, imported: Any):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(folder)
        self.hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.ours = build_model(imported.config, imported.tensors)
        self.ours_int8 = build_model(imported.config, imported.tensors)
        apply_options(self.ours_int8, ["int8"])
        self.eos = self.tok.eos_token_id
        self.ct2 = ct2_peer(folder)
        self.contexts = [self.tok.encode(TEMPLATE.replace("{prompt}", t)) for t in ITEMS]
        self.label_ids = [self.tok.encode(" " + lab, add_special_tokens=False)[0] for lab in LABELS]
        self.prompts = [
            self.tok.encode(
                self.tok.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )
            for p in PROMPTS
        ]


def hf_folder(imported: Any, out: Path) -> Path:
    """A plain transformers folder (config, safetensors, tokenizer) holding the imported weights."""
    from safetensors.torch import save_file

    config = {k: v for k, v in imported.config.items() if k not in ("quantization_config", "_name_or_path")}
    (out / "config.json").write_text(json.dumps(config, default=str))
    save_file({k: v.contiguous() for k, v in imported.tensors.items()}, str(out / "model.safetensors"))
    for name, data in imported.files.items():
        if name != "config.json":
            (out / name).write_bytes(data)
    return out


class Ct2:
    """CTranslate2 float32 and int8 in their own process (bench/peer_ct2.py says why), asked over a pipe."""

    def __init__(self, folder: Path):
        for kind in CT2_KINDS:  # converting needs torch: a process of its own as well
            subprocess.run(
                [sys.executable, "-c", CONVERT, str(folder), str(folder.parent / f"ct2-{kind}"), kind],
                check=True,
            )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.peer_ct2", str(folder.parent), str(THREADS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._answer()

    def ask(self, kind: str, op: str, **request: Any) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"kind": kind, "op": op, **request}) + "\n")
        self.process.stdin.flush()
        return self._answer()["out"]

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        answer = json.loads(self.process.stdout.readline() or '{"error": "the CTranslate2 process ended"}')
        if "error" in answer:
            raise RuntimeError(f"CTranslate2: {answer['error']}")
        return answer

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


CONVERT = (
    "import sys, ctranslate2; "
    "ctranslate2.converters.TransformersConverter(sys.argv[1]).convert(sys.argv[2], quantization=sys.argv[3])"
)


def ct2_peer(folder: Path) -> Ct2 | None:
    if importlib.util.find_spec("ctranslate2") is None:
        print("  CTranslate2 not installed (pip install -e .[bench]): skipped")
        return None
    return Ct2(folder)


# ---- classify: items per second over ITEMS, batches of BATCH


def llmk_classify(e: Engines, cached: bool) -> Callable[[], list[list[float]]]:
    batcher = ClassifyBatcher(e.ours, e.tok, max_batch_size=BATCH, max_wait_ms=0)

    def run() -> list[list[float]]:
        probs: list[list[float]] = []
        for i in range(0, len(ITEMS), BATCH):
            texts = ITEMS[i : i + BATCH]
            if cached:
                rows = batcher.submit(texts, LABELS, TEMPLATE).result()
            else:
                with torch.no_grad():
                    rows = compute.run(classify, e.ours, e.tok, texts, LABELS, TEMPLATE)
            probs += [[r[lab] for lab in LABELS] for r in rows]
        return probs

    return run


def hf_classify(e: Engines) -> Callable[[], list[list[float]]]:
    pad = e.tok.pad_token_id if e.tok.pad_token_id is not None else e.eos

    def run() -> list[list[float]]:
        probs: list[list[float]] = []
        for i in range(0, len(ITEMS), BATCH):
            rows = e.contexts[i : i + BATCH]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            probs += compute.run(label_probabilities, e, ids, mask)
        return probs

    return run


def label_probabilities(e: Engines, ids: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    """transformers' next-token probabilities of the labels; all of it on the compute thread, since a
    softmax on another thread starts a second OpenMP pool (see compute.py) and slows every engine after."""
    with torch.no_grad():
        logits = e.hf(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
    return logits[:, e.label_ids].softmax(-1).tolist()


def ct2_classify(e: Engines, kind: str, static: bool) -> Callable[[], list[list[float]]]:
    assert e.ct2 is not None
    ct2 = e.ct2
    head = len(e.tok.encode(TEMPLATE.split("{prompt}")[0])) - 1  # the same prefix llmk caches
    tokens = [e.tok.convert_ids_to_tokens(c) for c in e.contexts]

    def run() -> list[list[float]]:
        probs: list[list[float]] = []
        for i in range(0, len(ITEMS), BATCH):
            batch = tokens[i : i + BATCH]
            rows = [t[head:] for t in batch] if static else batch
            static_prompt = batch[0][:head] if static else None
            probs += ct2.ask(kind, "classify", rows=rows, static=static_prompt, label_ids=e.label_ids)
        return probs

    return run


# ---- generate: tokens per second, greedy, up to NEW_TOKENS each


def llmk_generate(e: Engines, n: int, model: Model) -> Callable[[], list[list[int]]]:
    generator = Generator(model, e.tok, max_active=BATCH, max_seq_len=256, eos_token_ids=[e.eos])

    def run() -> list[list[int]]:
        streams = [generator.submit(Request(p, chat=True, max_tokens=NEW_TOKENS)) for p in PROMPTS[:n]]
        return [s.result().token_ids for s in streams]

    return run


def hf_generate(e: Engines, n: int) -> Callable[[], list[list[int]]]:
    pad = e.tok.pad_token_id if e.tok.pad_token_id is not None else e.eos

    def run() -> list[list[int]]:
        rows = e.prompts[:n]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.no_grad():
            out = compute.run(
                e.hf.generate,
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                pad_token_id=pad,
            )
        return [_until_eos(r[width:].tolist(), e.eos) for r in out]

    return run


def ct2_generate(e: Engines, kind: str, n: int) -> Callable[[], list[list[int]]]:
    assert e.ct2 is not None
    ct2 = e.ct2
    rows = [e.tok.convert_ids_to_tokens(p) for p in e.prompts[:n]]

    def run() -> list[list[int]]:
        out: list[list[int]] = ct2.ask(kind, "generate", rows=rows, max_length=NEW_TOKENS, eos=e.eos)
        return out

    return run


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


# ---- the run


def interleaved(
    engines: dict[str, Callable[[], Any]], units: Callable[[Any], int]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median units per second of each engine over ROUNDS rounds, engines taking turns within each round."""
    outputs = {name: fn() for name, fn in engines.items()}  # warm-up, and the outputs compared below
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(ROUNDS):
        for name, fn in engines.items():
            start = time.perf_counter()
            out = fn()
            rates[name].append(units(out) / (time.perf_counter() - start))
    return {name: statistics.median(r) for name, r in rates.items()}, outputs


def headline(
    metric: str, unit: str, rates: dict[str, float], goal_peer: str, goal: float, extra: str = ""
) -> dict[str, Any]:
    ours = rates["llmk"]
    peers = {k: v for k, v in rates.items() if not k.startswith("llmk")}
    exact = {k: v for k, v in peers.items() if "int8" not in k}  # llmk runs fp32: int8 peers are listed only
    strongest = max(exact, key=exact.__getitem__)
    met = goal_peer in peers and ours / peers[goal_peer] >= goal
    target = (
        f">= {goal}x {goal_peer}" if goal_peer in peers else f">= {goal}x {goal_peer} (peer not installed)"
    )
    ratio_goal = ours / peers[goal_peer] if goal_peer in peers else float("nan")
    return {
        "metric": metric,
        "value": ours,
        "unit": unit,
        "baseline": f"strongest peer {strongest} {peers[strongest]:.3g}; "
        + ", ".join(f"{k} {v:.3g}" for k, v in rates.items() if k != "llmk")
        + extra,
        "ratio": round(ours / peers[strongest], 2),
        "goal": f"{target}: {'met' if met else 'missed'} ({ratio_goal:.2f}x)",
    }


def main() -> None:
    torch.set_num_threads(THREADS)
    imported = compute.run(load_source, "smollm2")
    with tempfile.TemporaryDirectory(prefix="llmk-bench-peers-") as tmp:  # every engine loads into memory
        folder = Path(tmp) / "hf"
        folder.mkdir()
        e = compute.run(lambda: Engines(hf_folder(imported, folder), imported))
    rows = []
    notes = "" if _has_llama_cpp() else "; llama.cpp not installed: skipped"

    cls = {
        "llmk": llmk_classify(e, cached=True),
        "llmk, no prefix cache": llmk_classify(e, cached=False),
        "transformers batched": hf_classify(e),
    }
    for kind in CT2_KINDS if e.ct2 else ():
        cls[f"CTranslate2 {kind}"] = ct2_classify(e, kind, static=False)
        cls[f"CTranslate2 {kind} static prompt"] = ct2_classify(e, kind, static=True)
    rates, outs = interleaved(cls, len)
    drift = max(
        abs(a - b)
        for x, y in zip(outs["llmk"], outs["transformers batched"], strict=False)
        for a, b in zip(x, y, strict=False)
    )
    rows.append(
        headline(
            f"classify, {len(ITEMS)} headlines, batches of {BATCH}, 3 single-token labels, prefix cached",
            "items/s",
            rates,
            "CTranslate2 float32",
            1.0,
            f"; max prob diff vs transformers {drift:.1e}" + notes,
        )
    )
    no_cache = {k: v for k, v in rates.items() if "static" not in k and k != "llmk"}
    no_cache["llmk"] = no_cache.pop("llmk, no prefix cache")
    rows.append(
        headline(
            f"classify, {len(ITEMS)} headlines, no prefix cache on either side",
            "items/s",
            no_cache,
            "CTranslate2 float32",
            1.0,
        )
    )
    rows[-1]["baseline"] += f"; prefix cache gain {rates['llmk'] / rates['llmk, no prefix cache']:.2f}x"

    for n, goal in ((BATCH, 1.0), (1, 0.8)):
        gen = {
            "llmk": llmk_generate(e, n, e.ours),
            "llmk int8": llmk_generate(e, n, e.ours_int8),
            "transformers batched": hf_generate(e, n),
        }
        for kind in CT2_KINDS if e.ct2 else ():
            gen[f"CTranslate2 {kind}"] = ct2_generate(e, kind, n)
        rates, outs = interleaved(gen, lambda out: sum(len(t) for t in out))
        n = len(outs["llmk"])
        same = sum(a == b for a, b in zip(outs["llmk"], outs["transformers batched"], strict=False))
        same_ct2 = sum(
            a == b for a, b in zip(outs["llmk"], outs.get("CTranslate2 float32", []), strict=False)
        )
        rows.append(
            headline(
                f"generate, {n} stream(s) x {NEW_TOKENS} tokens, greedy",
                "tokens/s",
                rates,
                "CTranslate2 float32",
                goal,
                f"; greedy equal to transformers {same}/{n}, to CTranslate2 fp32 {same_ct2}/{n}" + notes,
            )
        )
        rows.append(int8_row(n, rates, outs))
    if e.ct2:
        e.ct2.close()
    write("peers", rows, "python -m bench.bench_peers")


def int8_row(n: int, rates: dict[str, float], outs: dict[str, Any]) -> dict[str, Any]:
    """llmk with int8 weights against CTranslate2 int8; greedy tokens of each against its float32 self."""
    ours, peer = rates["llmk int8"], rates.get("CTranslate2 int8")

    def same(a: str, b: str) -> int:
        return sum(x == y for x, y in zip(outs[a], outs.get(b, []), strict=False))

    against = f"CTranslate2 int8 {peer:.3g}" if peer is not None else "CTranslate2 not installed"
    return {
        "metric": f"generate, {n} stream(s) x {NEW_TOKENS} tokens, greedy, int8 weights "
        "(LLMK_LOAD_OPTIONS=int8)",
        "value": ours,
        "unit": "tokens/s",
        "baseline": f"{against}; llmk float32 {rates['llmk']:.3g}; greedy equal to llmk float32 "
        f"{same('llmk int8', 'llmk')}/{n}, CTranslate2 int8 to CTranslate2 float32 "
        f"{same('CTranslate2 int8', 'CTranslate2 float32')}/{n}",
        "ratio": round(ours / peer, 2) if peer else "",
        "goal": f">= 1.0x CTranslate2 int8: {'met' if peer and ours >= peer else 'missed'}",
    }


def _has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


if __name__ == "__main__":
    main()
