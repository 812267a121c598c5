"""Cold start on the development split: items first seen in the replayed period, ranked by a frozen model.

The first version is trained on the first 90% by time. A catalog item without a rating there is cold; the
cold items placed are those rated in the replayed period (content for all 1,841 unrated catalog items is
too slow with SmolLM2 on 2 shared cores), so the other unrated items do not compete in these rankings.
Three ways to serve cold items are compared on their replayed positives (each ranked against every item in
the table, the user's seen items excluded): placed from SmolLM2's content vectors (title, genres and the
tags given before the cut), appended as zero rows (what a table that only grows on contact would hold),
and a uniformly random rank among the candidates (its expected NDCG@10, exactly). Content vectors are
computed for the items needed: the cold items, and the most liked trained items the map learns from.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from services.rec.adapters import files
from services.rec.interface import Interaction, RecConfig
from services.rec.usecases import content
from services.rec.usecases.model import ITEM_BIAS, ITEM_EMBEDDING, USER_EMBEDDING, Tables
from services.rec.usecases.training import TrainSpec, fit


def cold_start(epochs: int, dim: int, warm_items: int, llm: str = "smollm2") -> dict[str, Any]:
    rows = files.ratings(files.MOVIELENS / "ratings.csv")
    history, held_out = files.split(rows, 0.1)
    data = files.MOVIELENS
    texts = files.item_texts(data / "movies.csv", data / "tags.csv", until=history[-1].timestamp)
    trained = fit(history, RecConfig(dim=dim), TrainSpec(epochs=epochs, batch_size=4096, lr=0.02))
    # the cold items that are rated in the replayed period: SmolLM2 on 2 shared cores is too slow for all
    cold = sorted({r.item for r in held_out if r.item not in trained.items.of and r.item in texts})
    liked = Counter(r.item for r in history if r.rating >= 4)
    needed = cold + [i for i, _ in liked.most_common(warm_items)]
    started = time.perf_counter()
    vectors = _content_vectors(llm, {i: texts[i] for i in needed})
    content_s = time.perf_counter() - started
    placed = copy.deepcopy(trained)
    content.place_cold_items(placed, vectors, cold)
    zeros = copy.deepcopy(trained)
    for item in cold:
        zeros.item_row(item)  # spare rows are zeros: no embedding, no bias
    tests = _cold_tests(history, held_out, set(cold))
    return {
        "llm": llm,
        "cold_items": len(cold),
        "cold_items_are": "catalog items unrated in the first 90% and rated in the replayed 10%",
        "train_epochs": epochs,
        "content_vectors_computed": len(needed),
        "content_seconds": round(content_s, 1),
        "tests": len(tests),
        "systems": {
            "content_rows": _score(placed, tests),
            "zero_rows": _score(zeros, tests),
            "random_rank_expected": _random(placed, tests),
        },
    }


def _content_vectors(llm: str, texts: dict[int, str]) -> dict[int, torch.Tensor]:
    """`llm` imported into a scratch store and served in this process, as `rec train --content-model`."""
    from llmk.bootstrap import Deployment
    from llmk.config import Settings
    from services.store.adapters.importers import load_source

    with tempfile.TemporaryDirectory() as home:
        settings = Settings(_env_file=None, home=Path(home), database_url="", broker_url="memory://")
        deployment = Deployment(settings)
        imported = load_source(llm)
        deployment.local_store().create_model("llm", imported.tensors, imported.config, imported.files)
        client = deployment.inference("llm", None)
        try:
            return content.vectors(client, texts, batch=32)
        finally:
            client.close()


def _cold_tests(
    history: Sequence[Interaction], held_out: Sequence[Interaction], cold: set[int]
) -> list[tuple[int, int, frozenset[int]]]:
    """(user, item, seen items) for each replayed positive of a cold item, in time order."""
    seen: dict[int, set[int]] = defaultdict(set)
    for r in history:
        seen[r.user].add(r.item)
    tests = []
    for r in held_out:
        if r.rating >= 4 and r.item in cold and r.item not in seen[r.user]:
            tests.append((r.user, r.item, frozenset(seen[r.user])))
        seen[r.user].add(r.item)
    return tests


def _score(tables: Tables, tests: list[tuple[int, int, frozenset[int]]]) -> dict[str, float]:
    """NDCG@10 and the mean rank percentile of the item among all items in the table (0 = top)."""
    n = len(tables.items)
    emb, bias = tables.t[ITEM_EMBEDDING][:n], tables.t[ITEM_BIAS][:n]
    popular = torch.zeros(n)  # unknown users: no personal scores; cold items have no positives either
    ndcg, percentile = 0.0, 0.0
    for user, item, seen in tests:
        row = tables.users.get(user)
        scores = popular.clone() if row is None else emb @ tables.t[USER_EMBEDDING][row] + bias
        hidden = [tables.items.of[i] for i in seen if i in tables.items.of]
        scores[hidden] = float("-inf")
        target = scores[tables.items.of[item]]
        above, ties = int((scores > target).sum()), int((scores == target).sum()) - 1
        rank = above + ties / 2  # ties take the middle of their places
        ndcg += 1 / math.log2(rank + 2) if rank < 10 else 0.0
        percentile += rank / max(n - len(hidden) - 1, 1)
    count = max(len(tests), 1)
    return {"ndcg_at_10": round(ndcg / count, 5), "mean_rank_percentile": round(percentile / count, 4)}


def _random(tables: Tables, tests: list[tuple[int, int, frozenset[int]]]) -> dict[str, float]:
    n = len(tables.items)
    total = 0.0
    for _, _, seen in tests:
        candidates = n - sum(i in tables.items.of for i in seen)
        total += sum(1 / math.log2(r + 2) for r in range(min(10, candidates))) / candidates
    return {"ndcg_at_10": round(total / max(len(tests), 1), 5), "mean_rank_percentile": 0.5}
