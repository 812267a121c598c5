"""Quality metrics shared by the tiers that train (optimizer gates) and the ones that report (monitor)."""

from __future__ import annotations

from collections.abc import Sequence


def macro_f1(truth: Sequence[int], predicted: Sequence[int], labels: int) -> float:
    """Mean F1 over the labels that occur in the truth or the predictions (sklearn's macro average)."""
    scores = []
    for c in range(labels):
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == c and p != c)
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0
