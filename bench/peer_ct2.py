"""CTranslate2 in a process of its own, answering bench_peers over a pipe: one JSON request per line in,
one JSON answer per line out.

Why a process: CTranslate2 and torch each bring an OpenMP runtime, and in one process CTranslate2's calls
bound to torch's; once its thread had run there, llmk's decode steps slept between ops (batch 1: 19-22
tokens/s alone, 13-15 after one CTranslate2 run). A user runs CTranslate2 without torch, so it runs here
without torch, and llmk without CTranslate2. This module imports neither torch nor anything of llmk.

    python -m bench.peer_ct2 FOLDER THREADS    (FOLDER holds ct2-float32/ and ct2-int8/)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np

KINDS = ("float32", "int8")


def classify(generator: Any, rows: list[list[str]], static: list[str] | None, label_ids: list[int]) -> Any:
    """Next-token probabilities of the label tokens, one row per prompt."""
    options: dict[str, Any] = {"static_prompt": static} if static else {}
    results = generator.generate_batch(
        rows, max_length=1, include_prompt_in_result=False, return_logits_vocab=True, **options
    )
    scores = np.stack([np.asarray(r.logits[0][0]).reshape(-1)[label_ids] for r in results])
    scores = np.exp(scores - scores.max(axis=1, keepdims=True))
    return (scores / scores.sum(axis=1, keepdims=True)).tolist()


def generate(generator: Any, rows: list[list[str]], max_length: int, eos: int) -> Any:
    results = generator.generate_batch(
        rows,
        max_length=max_length,
        sampling_topk=1,
        include_prompt_in_result=False,
        end_token=[eos],
        return_end_token=True,
    )
    return [list(r.sequences_ids[0]) for r in results]


def main() -> None:
    folder, threads = Path(sys.argv[1]), int(sys.argv[2])
    generators = {
        kind: ctranslate2.Generator(
            str(folder / f"ct2-{kind}"), device="cpu", intra_threads=threads, inter_threads=1
        )
        for kind in KINDS
    }
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        generator = generators[request.pop("kind")]
        op = classify if request.pop("op") == "classify" else generate
        start = time.perf_counter()
        try:
            out = op(generator, **request)
        except Exception as error:  # reported to the bench, which stops with it
            print(json.dumps({"error": repr(error)}), flush=True)
            continue
        print(json.dumps({"out": out, "seconds": time.perf_counter() - start}), flush=True)


if __name__ == "__main__":
    main()
