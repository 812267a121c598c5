"""Intent routing's cost on the real SmolLM2-135M (this machine's CPU), through the engine's classify.

- 77 multi-token labels (the packaged banking77 task's intents) against 3 single-token labels, one
  customer message each time, medians of 7 runs (3 for the full-row baseline). Goal: <= 3x. The 77 labels
  run on the shared-prefix path (the message's keys and values once, then one tree-shaped row of the
  labels' tokens); every label as a full row (the path before) is measured in the same run as baseline.

- The gateway's overhead: 16 concurrent streaming clients through the OpenAI-compatible API (the official
  `openai` client, SSE over loopback HTTP) against the same 16 greedy generations through the in-process
  inference client the gateway itself uses, in the same run on the same loaded model, rounds interleaved.
  Goals: API tokens/s >= 0.9x in-process, time-to-first-token p50 <= 1.2x.

python -m bench.bench_support [--part intents|gateway|all]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS, best_of, write
from llmk.domain.task_spec import INTENT_TEMPLATE, packaged
from services.inference.engine.classifier import classify
from services.inference.engine.model import Model, build_model
from services.store.adapters.importers import smollm2_path

MESSAGE = "I ordered a new card two weeks ago and it still hasn't arrived, what should I do?"
TEMPLATE = INTENT_TEMPLATE.replace("{text}", "{prompt}")  # the banking77 task's own prompt
THREE = ["yes", "no", "maybe"]
REPEAT = 7


def load() -> tuple[Model, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return build_model(hf.config.to_dict(), hf.state_dict()), tokenizer


def full_rows(model: Model, tokenizer: Any, labels: list[str]) -> None:
    """The baseline: every label scored as its own full row (prompt + label), one padded pass."""
    context = tokenizer.encode(TEMPLATE.replace("{prompt}", MESSAGE))
    rows = [context + tokenizer.encode(" " + lab, add_special_tokens=False) for lab in labels]
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True)
    mask = (torch.arange(ids.shape[1]) < torch.tensor([len(r) for r in rows])[:, None]).long()
    with torch.no_grad():
        model.features(ids, mask)


def intents() -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model, tokenizer = load()
    intents = list(packaged("banking77").labels)
    single = [len(tokenizer.encode(" " + lab, add_special_tokens=False)) for lab in THREE]
    multi = [len(tokenizer.encode(" " + lab, add_special_tokens=False)) for lab in intents]
    assert single == [1, 1, 1], single
    prompt_tokens = len(tokenizer.encode(TEMPLATE.replace("{prompt}", MESSAGE)))
    three = best_of(lambda: classify(model, tokenizer, [MESSAGE], THREE, TEMPLATE), REPEAT)
    many = best_of(lambda: classify(model, tokenizer, [MESSAGE], intents, TEMPLATE), REPEAT)
    before = best_of(lambda: full_rows(model, tokenizer, intents), 3)  # the slow path: fewer runs
    rows = [
        {
            "metric": "classify 1 message x 77 multi-token labels / x 3 single-token labels",
            "value": many / three,
            "unit": "x",
            "goal": "<= 3",
            "seconds_77": many,
            "seconds_3": three,
            "label_tokens_77": f"{min(multi)}-{max(multi)} (mean {sum(multi) / len(multi):.1f})",
            "prompt_tokens": prompt_tokens,
        },
        {
            "metric": "77 labels: every label a full row / shared-prefix path",
            "value": before / many,
            "unit": "x",
            "baseline": f"{before:.4f} s full rows",
            "seconds_77": many,
        },
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("intents", "gateway", "all"), default="all")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = intents() if args.part in ("intents", "all") else []
    if args.part in ("gateway", "all"):
        rows += gateway(args.clients, args.max_tokens, args.rounds)
    kept = _previous_rows({r["metric"] for r in rows})  # a part run alone keeps the other part's rows
    write("support", kept + rows, f"python -m bench.bench_support --part {args.part}")


def _previous_rows(replaced: set[str]) -> list[dict[str, Any]]:
    path = RESULTS / "support.json"
    if not path.is_file():
        return []
    return [r for r in json.loads(path.read_text())["rows"] if r["metric"] not in replaced]


# ---- the gateway against the in-process client

MESSAGES = [
    "I ordered a new card two weeks ago and it still hasn't arrived, what should I do?",
    "how can I cancel my order?",
    "I want to change the shipping address of my purchase",
    "my refund has not shown up yet",
    "can you help me reset my password",
    "which payment methods do you accept?",
    "I need to speak with a human agent",
    "how do I track my parcel",
]


@dataclass
class Stream:
    ttft: float
    seconds: float
    tokens: int


def gateway(clients: int, max_tokens: int, rounds: int) -> list[dict[str, Any]]:
    """Interleaved rounds of `clients` concurrent streams: in-process first, then through the API."""
    import tempfile

    with (
        tempfile.TemporaryDirectory(prefix="llmk-bench-support-") as home,
        _served(Path(home), clients) as (
            client,
            base_url,
        ),
    ):
        prompts = [MESSAGES[i % len(MESSAGES)] for i in range(clients)]
        _in_process_round(client, prompts[:2], max_tokens)  # warm both paths once, unmeasured
        _api_round(base_url, prompts[:2], max_tokens)
        local: list[Stream] = []
        api: list[Stream] = []
        local_rates, api_rates = [], []
        for _ in range(rounds):
            streams, wall = _in_process_round(client, prompts, max_tokens)
            local += streams
            local_rates.append(sum(s.tokens for s in streams) / wall)
            streams, wall = _api_round(base_url, prompts, max_tokens)
            api += streams
            api_rates.append(sum(s.tokens for s in streams) / wall)
    rate_local, rate_api = statistics.median(local_rates), statistics.median(api_rates)
    ttft_local = statistics.median(s.ttft for s in local)
    ttft_api = statistics.median(s.ttft for s in api)
    same = {
        "clients": clients,
        "max_tokens": max_tokens,
        "rounds": rounds,
        "tokens_per_round_in_process": sum(s.tokens for s in local) // rounds,
        "tokens_per_round_api": sum(s.tokens for s in api) // rounds,
        "load_average": os.getloadavg()[0],
    }
    return [
        {
            "metric": f"API / in-process tokens/s, {clients} concurrent streams",
            "value": rate_api / rate_local,
            "unit": "x",
            "goal": ">= 0.9",
            "tokens_per_s_api": rate_api,
            "tokens_per_s_in_process": rate_local,
            **same,
        },
        {
            "metric": f"API / in-process time to first token p50, {clients} concurrent streams",
            "value": ttft_api / ttft_local,
            "unit": "x",
            "goal": "<= 1.2",
            "ttft_p50_api_s": ttft_api,
            "ttft_p50_in_process_s": ttft_local,
            **same,
        },
    ]


@contextmanager
def _served(home: Path, clients: int) -> Iterator[tuple[Any, str]]:
    """SmolLM2 imported into an embedded home; its in-process client, and the gateway over that client."""
    import threading

    import uvicorn

    from llmk.bootstrap import Deployment, embedded
    from llmk.config import Settings
    from llmk.domain.versions import CommitInfo
    from services.store.adapters.importers import load_source
    from services.support.main import build

    settings = embedded(Settings(), home).model_copy(
        update={"serve_model": "smol", "max_sequences": clients, "max_queue": 4 * clients}
    )
    tiers = Deployment(settings)
    store = tiers.store()
    try:
        imported = load_source("smollm2")
        store.create_model(
            "smol", imported.tensors, imported.config, imported.files, CommitInfo(message="import")
        )
    finally:
        store.close()
    client = tiers.inference("smol", None, shared=True)
    support, app = build(tiers, lambda: client)  # the gateway answers through this very client
    support.start()
    assert support.wait_ready(300).ready, support.health().detail
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield client, f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
        support.close()


def _in_process_round(client: Any, prompts: list[str], max_tokens: int) -> tuple[list[Stream], float]:
    from services.inference.interface import Finished, GenerateRequest

    def one(prompt: str) -> Stream:
        began, first, tokens = time.perf_counter(), None, 0
        for item in client.generate(GenerateRequest(prompt, max_tokens=max_tokens, temperature=0.0)):
            if isinstance(item, Finished):
                tokens = item.completion_tokens
            elif item and first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        return Stream((first or end) - began, end - began, tokens)

    return _concurrently(one, prompts)


def _api_round(base_url: str, prompts: list[str], max_tokens: int) -> tuple[list[Stream], float]:
    import openai

    api = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

    def one(prompt: str) -> Stream:
        began, first, tokens = time.perf_counter(), None, 0
        stream = api.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter()
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        end = time.perf_counter()
        return Stream((first or end) - began, end - began, tokens)

    return _concurrently(one, prompts)


def _concurrently(one: Any, prompts: list[str]) -> tuple[list[Stream], float]:
    began = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        streams = list(pool.map(one, prompts))
    return streams, time.perf_counter() - began


if __name__ == "__main__":
    main()
