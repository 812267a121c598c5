"""How many interactions per second `llmk rec stream` keeps up with (the goal: at least 500).

The development split's last part (9,075 MovieLens interactions) goes through the stream's own code path:
the file reader, the source thread that ticks for timed commits, and the Streamer committing every second
to a store on SQLite. Three figures in one run: the reader alone (the ceiling of the source), the
Streamer with its closed-form gradient step, and the same Streamer with the autograd step it used before
(the baseline). Then `llmk rec stream` itself as a process, start-up and model load included.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench import rec_latency as lat
from llmk.domain.optim import optimizer_step
from services.rec.adapters import files
from services.rec.interface import Interaction, RecConfig
from services.rec.usecases import recommender
from services.rec.usecases.model import ITEM_BIAS, ITEM_EMBEDDING, USER_EMBEDDING
from services.rec.usecases.streaming import CommitPolicy, Streamer
from services.rec.usecases.training import TrainSpec, bpr_gradients

COMMIT_SECONDS = 1.0


class AutogradStreamer(Streamer):
    """The baseline: the online step with gradients from autograd, as the stream computed them before."""

    def _step(self, user: int, item: int) -> None:
        t, config = self.tables.t, self.tables.config
        drawn = torch.randint(len(self.tables.items), (config.online_negatives,), generator=self._generator)
        negatives = drawn[drawn != item].unique()
        if negatives.numel() == 0:
            return
        rows = torch.cat([torch.tensor([item]), negatives])
        params = {"user": t[USER_EMBEDDING][user : user + 1], "item": t[ITEM_EMBEDDING][rows]}
        params["bias"] = t[ITEM_BIAS][rows]
        local_neg = torch.arange(1, rows.numel())[None, :]
        grads = bpr_gradients(params, torch.tensor([0]), torch.tensor([0]), local_neg, config.weight_decay)
        updates = optimizer_step(self._sgd, params, grads, {})
        t[USER_EMBEDDING][user] += updates["user"][0]
        t[ITEM_EMBEDDING][rows] += updates["item"]
        t[ITEM_BIAS][rows] += updates["bias"]
        self.tables.touch((USER_EMBEDDING,), [user])
        self.tables.touch((ITEM_EMBEDDING, ITEM_BIAS), rows.tolist())


def throughput(history: Sequence[Interaction], stream: Sequence[Interaction]) -> dict[str, Any]:
    from llmk.bootstrap import Deployment
    from llmk.config import Settings

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "stream.csv"
        files.write_ratings(list(stream), source)
        train = Path(tmp) / "train.csv"
        files.write_ratings(list(history), train)
        started = time.perf_counter()
        read = sum(1 for _ in files.ticking(files.records(str(source)), COMMIT_SECONDS / 4))
        reader = read / (time.perf_counter() - started)
        settings = Settings(_env_file=None, home=Path(tmp) / "home", database_url="", broker_url="memory://")
        store = Deployment(settings).local_store()
        found: dict[str, Any] = {"interactions": len(stream), "reader_alone_per_second": round(reader)}
        for name, kind in (("closed_form", Streamer), ("autograd_baseline", AutogradStreamer)):
            model = f"ml-{name}"
            spec = TrainSpec(epochs=1, batch_size=4096, lr=0.02)
            recommender.create(store, model, history, {}, RecConfig(), spec)
            tables, head = recommender.load(store, model, "main")
            streamer = kind(store, model, "main", head, tables, CommitPolicy(0, COMMIT_SECONDS))
            started = time.perf_counter()
            records = files.ticking(files.records(str(source)), COMMIT_SECONDS / 4)
            summary = streamer.consume(records)
            seconds = time.perf_counter() - started
            assert summary.applied == len(stream), summary.as_dict()
            found[f"{name}_per_second"] = round(summary.read / seconds)
            found[f"{name}_versions"] = len(summary.versions)
        store.close()
        found["closed_form_over_autograd"] = round(
            found["closed_form_per_second"] / found["autograd_baseline_per_second"], 2
        )
        found |= _cli(Path(tmp), train, source, len(stream))
    found["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return found


def _cli(tmp: Path, train: Path, source: Path, n: int) -> dict[str, Any]:
    """`llmk rec stream` as a process on its own store: wall seconds from start to its summary."""
    env = lat.environment(tmp / "cli-home")
    train_args = ["rec", "train", "--model", "ml", "--ratings", str(train), "--epochs", "1"]
    subprocess.run([*lat.COMMAND, *train_args], env=env, check=True, capture_output=True)
    args = ["rec", "stream", "--model", "ml", "--source", str(source), "--commit-every", "0"]
    args += ["--commit-every-seconds", str(COMMIT_SECONDS), "--json"]
    started = time.perf_counter()
    done = subprocess.run([*lat.COMMAND, *args], env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    summary = json.loads(done.stdout)
    assert summary["in"] == n == summary["applied"] + summary["rejected"], summary
    return {"cli_wall_seconds_with_startup": round(wall, 2), "cli_per_second_with_startup": round(n / wall)}
