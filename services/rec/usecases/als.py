"""The peer a team without online learning would run: implicit's ALS, trained from scratch on positives."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

Ranker = Callable[[int, int, frozenset[int]], list[int] | None]


def train_als(positives: Sequence[tuple[int, int]], factors: int, seed: int, iterations: int = 15) -> Ranker:
    """A ranker over the users and items of `positives`; it answers None for a user it was not trained on."""
    from implicit.cpu.als import AlternatingLeastSquares  # type: ignore[import-untyped]
    from scipy.sparse import csr_matrix  # type: ignore[import-untyped]

    users = {u: n for n, u in enumerate(dict.fromkeys(u for u, _ in positives))}
    items = {i: n for n, i in enumerate(dict.fromkeys(i for _, i in positives))}
    rows = np.fromiter((users[u] for u, _ in positives), dtype=np.int32, count=len(positives))
    cols = np.fromiter((items[i] for _, i in positives), dtype=np.int32, count=len(positives))
    matrix = csr_matrix(
        (np.ones(len(positives), dtype=np.float32), (rows, cols)), shape=(len(users), len(items))
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    model = AlternatingLeastSquares(factors=factors, iterations=iterations, random_state=seed, num_threads=1)
    model.fit(matrix, show_progress=False)
    item_ids = np.array(list(items), dtype=np.int64)

    def rank(user: int, k: int, exclude: frozenset[int]) -> list[int] | None:
        row = users.get(user)
        if row is None:
            return None
        scores = model.item_factors @ model.user_factors[row]
        hidden = [items[i] for i in exclude if i in items]
        scores[hidden] = -np.inf
        top = np.argsort(-scores, kind="stable")[:k]
        return [int(item_ids[t]) for t in top if np.isfinite(scores[t])]

    return rank
