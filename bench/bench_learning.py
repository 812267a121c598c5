"""Learning quality: the optimizer's feedback recipe against what a user could do with the same rows.

The recipe runs the job runner's own math (AdamW steps, deferred steps, top-k or low-rank with error
feedback, the held-out gate) on SmolLM2 without the store, on exactly the feedback rows `llmk demo` sends
(same seed, same order), and is scored on the same held-out valid.csv rows; beside it the baselines of
services/optimizer/usecases/baselines.py on the same rows. `--dev` scores on a development split carved
from train.csv instead (stream rows the optimizer never sees): every recipe decision is made there.

    HF_HUB_OFFLINE=1 PYTHONPATH=shared:. .venv/bin/python -m bench.bench_learning [--dev] [--variant NAME]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from bench.common import RESULTS, write
from llmk.domain.optim import OptimizerSpec, optimizer_step
from llmk.domain.task_spec import TaskSpec, packaged
from services.optimizer.interface import Example
from services.optimizer.usecases import baselines
from services.optimizer.usecases.causal_lm import build_model, load_tokenizer
from services.optimizer.usecases.feedback import FeedbackTrainer
from services.optimizer.usecases.sparse_updates import compress, defer, discard_residuals


@dataclass(frozen=True)
class Recipe:
    layers: tuple[int, ...] = (26, 27, 28, 29)
    parts: tuple[str, ...] = ("mlp",)  # "mlp", "attn"
    lr: float = 1e-4
    topk: float = 0.05
    rank: int = 0
    commit_every: int = 4
    tolerance: float = 0.03
    local: bool = False  # the job trains at served + residuals (JobSpec.local_steps)
    replay: int = 0  # earlier examples rehearsed in each step (JobSpec.replay)
    template: str | None = None

    def trainable(self) -> list[str]:
        names = {
            "mlp": ("gate_proj", "up_proj", "down_proj"),
            "attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
        }
        sub = {"mlp": "mlp", "attn": "self_attn"}
        return [
            f"model.layers.{i}.{sub[p]}.{n}.weight" for i in self.layers for p in self.parts for n in names[p]
        ]


VARIANTS: dict[str, Recipe] = {
    "demo": Recipe(),
    "local": Recipe(local=True),
    "local-lr3e-4": Recipe(local=True, lr=3e-4),
    "lr3e-4": Recipe(lr=3e-4),
    "attn+mlp": Recipe(parts=("mlp", "attn"), local=True),
    "8layers": Recipe(layers=tuple(range(22, 30)), local=True),
    "rank8": Recipe(rank=8, local=True),
    "every1": Recipe(commit_every=1, topk=0.0125),
    "local-replay16": Recipe(local=True, replay=16),
    "replay16": Recipe(replay=16),
    "dense-local": Recipe(topk=1.0, local=True),
    "local-replay32-lr3e-4": Recipe(local=True, replay=32, lr=3e-4),
    "local-replay16-attn+mlp": Recipe(parts=("mlp", "attn"), local=True, replay=16),
}


@dataclass
class Model:
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    files: dict[str, bytes]

    def trainer(self, names: Sequence[str], task: TaskSpec) -> FeedbackTrainer:
        """A fresh model whose trainable tensors are copies, so training leaves the loaded ones alone."""
        tensors = {**self.tensors, **{n: self.tensors[n].clone() for n in names}}
        network = build_model(self.config, tensors)
        return FeedbackTrainer(
            network, load_tokenizer(self.files, int(self.config["vocab_size"])), task, names
        )


@dataclass
class Run:
    dev: list[float] = field(default_factory=list)  # held-out macro-F1 after each promoted version
    promoted: int = 0
    held_back: int = 0
    gate: list[float] = field(default_factory=list)  # the gate's macro-F1 of each candidate version
    bytes_per_version: list[int] = field(default_factory=list)


def run_recipe(t: FeedbackTrainer, r: Recipe, feedback: list[Example], gate: list[Example]) -> Run:
    """The job runner's stepping (services/optimizer/usecases/training.py), in one process: steps of 16
    new examples (plus `replay` earlier ones), a version every `commit_every` steps, the gate on each."""
    spec, run = OptimizerSpec(kind="adamw", lr=r.lr), Run()
    state: dict[str, torch.Tensor] = {}
    served = {n: v.clone() for n, v in t.values().items()}
    metric = t.evaluate(gate)

    def run_ahead() -> None:  # with local steps the job trains at served + residuals
        if r.local:
            t.set_values({n: v + state.get(f"{n}::residual", torch.zeros_like(v)) for n, v in served.items()})

    for number in range(1, len(feedback) // 16 + 1):
        earlier = feedback[: (number - 1) * 16]
        rehearsed = random.Random(number - 1).sample(earlier, min(r.replay, len(earlier)))
        _, grads = t.loss_and_grads(feedback[(number - 1) * 16 : number * 16] + rehearsed)
        deltas = optimizer_step(spec, t.values(), grads, state)
        if number % r.commit_every:
            defer(state, deltas)
            run_ahead()
            continue
        update = compress(served, deltas, state, r.topk, r.rank)
        t.set_values(update.values)
        m = t.evaluate(gate)
        run.gate.append(round(m, 4))
        if m < metric - r.tolerance:
            t.set_values(served)
            discard_residuals(state)
            run.held_back += 1
            continue
        metric, served = m, {n: v.clone() for n, v in update.values.items()}
        run_ahead()
        run.promoted += 1
        run.bytes_per_version.append(update.nbytes)
    t.set_values(served)  # what the workers serve at the end
    return run


def rows(seed: int, dev: bool) -> tuple[list[Example], list[Example], list[Example]]:
    """(feedback in the demo's order, gate, held-out): the demo's own plan for this seed."""
    from llmk.cli.demo import make_plan

    plan = make_plan(packaged("sentiment"), 1000, 960, 300, seed)
    feedback = [e for chunk in plan.feedback for e in chunk]
    if dev:  # stream rows: train.csv, never sent as feedback, natural label mix like valid.csv
        held = [Example(text=i.text, label=i.fields["label"]) for i in plan.stream[:300]]
    else:
        held = [Example(text=t, label=label) for t, label in plan.held_out]
    return feedback, plan.gate, held


def load() -> Model:
    from services.store.adapters.importers import load_source

    imported = load_source("smollm2")
    return Model(dict(imported.config), dict(imported.tensors), dict(imported.files))


def measure(model: Model, recipe: Recipe, seed: int, dev: bool) -> dict[str, Any]:
    task = packaged("sentiment")
    if recipe.template:
        task = replace(task, template=recipe.template)
    feedback, gate, held = rows(seed, dev)
    t = model.trainer(recipe.trainable(), task)
    _share_frozen_outputs(t)
    zero = _figures(t, held)
    began = time.monotonic()
    run = run_recipe(t, recipe, feedback, gate)
    final = _figures(t, held)
    return {
        "recipe": vars(recipe),
        "zero_shot": zero,
        "final": final,
        "promoted": run.promoted,
        "held_back": run.held_back,
        "gate": run.gate,
        "bytes_per_version": max(run.bytes_per_version, default=0),
        "train_seconds": round(time.monotonic() - began, 1),
    }


_SCORERS: dict[int, Any] = {}


def _share_frozen_outputs(t: FeedbackTrainer) -> None:
    """Recipes split at the same layer reuse what the frozen layers below make of each text."""
    if (done := _SCORERS.setdefault(t.scorer.split, t.scorer)) is not t.scorer:
        t.scorer.share_cache(done)


def _figures(t: FeedbackTrainer, held: list[Example]) -> dict[str, float]:
    predicted = [t.task.labels[i] for i in t.predict(held)]
    return baselines.score([e.label for e in held], predicted, t.task.labels, time.monotonic()).as_dict()


def measure_baselines(model: Model, recipe: Recipe, seed: int, dev: bool, dense: bool) -> dict[str, Any]:
    task = packaged("sentiment")
    feedback, gate, held = rows(seed, dev)
    train = feedback + gate  # every labelled row the demo sends (the gate's rows too)
    t = model.trainer(recipe.trainable(), task)
    out = {
        "tfidf_lr": baselines.tfidf_lr(train, held, task.labels).as_dict(),
        "linear_probe": baselines.linear_probe(t, train, held).as_dict(),
    }
    if dense:
        out["dense"] = baselines.dense(t, train, held, lr=recipe.lr).as_dict()
    return out


def rows_for_results(results: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The bench's rows: the recipe's held-out macro-F1 against each baseline, as ratios and differences."""
    recipe, base = results[name], results["baselines"]
    f1 = recipe["final"]["macro_f1"]
    best = max(base["tfidf_lr"]["macro_f1"], base["linear_probe"]["macro_f1"])
    out = [
        {
            "metric": f"recipe {name!r} held-out macro-F1",
            "value": f1,
            "unit": "",
            "bytes_per_version": recipe["bytes_per_version"],
            "zero_shot": recipe["zero_shot"]["macro_f1"],
        },
        {
            "metric": "recipe minus best of TF-IDF+LR and linear probe (macro-F1)",
            "value": round(f1 - best, 4),
            "unit": "",
            "baseline": best,
            "goal": ">= 0.10",
        },
    ]
    for key, figures in base.items():
        out.append(
            {
                "metric": f"{key} held-out macro-F1",
                "value": figures["macro_f1"],
                "unit": "",
                "accuracy": figures["accuracy"],
                "ratio": round(f1 / figures["macro_f1"], 3),
            }
        )
    if "dense" in base:
        out[-1]["goal"] = "recipe >= 0.95x dense"
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dev", action="store_true", help="score on a dev split of train.csv (for decisions)")
    p.add_argument("--variant", action="append", help=f"recipes to run: {', '.join(VARIANTS)}")
    p.add_argument("--baselines", action="store_true")
    p.add_argument("--dense", action="store_true", help="with --baselines: the dense fine-tune too")
    p.add_argument("--write", action="store_true", help="bench/results/learning.json (first variant)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    model = load()
    results: dict[str, Any] = {
        "split": "dev (train.csv stream rows)" if a.dev else "valid.csv (demo held-out)"
    }
    for name in a.variant or []:
        results[name] = measure(model, VARIANTS[name], a.seed, a.dev)
        print(name, json.dumps(results[name]), flush=True)
    if a.baselines:
        results["baselines"] = measure_baselines(
            model, VARIANTS[(a.variant or ["demo"])[0]], a.seed, a.dev, a.dense
        )
        print("baselines", json.dumps(results["baselines"]), flush=True)
    if a.write and a.variant and a.baselines:
        command = "python -m bench.bench_learning " + " ".join(argv or [])
        write("learning", rows_for_results(results, a.variant[0]), command)
        (RESULTS / "learning-detail.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
