"""Intent routing's cost on the real SmolLM2-135M (this machine's CPU), through the engine's classify.

- 77 multi-token labels (the packaged banking77 task's intents) against 3 single-token labels, one
  customer message each time, medians of 7 runs (3 for the full-row baseline). Goal: <= 3x. The 77 labels
  run on the shared-prefix path (the message's keys and values once, then one tree-shaped row of the
  labels' tokens); every label as a full row (the path before) is measured in the same run as baseline.

python -m bench.bench_support
"""

from __future__ import annotations

import os
from typing import Any

import torch

from bench.common import best_of, write
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


def main() -> None:
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
    write("support", rows, "python -m bench.bench_support")


if __name__ == "__main__":
    main()
