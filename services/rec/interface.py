"""The recommendation tier as its callers (the CLI, the bench, other tiers) reach it: records and Protocols.

A recommender model is an ordinary stored model: user and item embedding tables, item biases, item
positive counts (for the popular fallback) and the id->row mappings are tensors of one version, so history,
diff, rollback, freeze and export treat them like any other parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

POSITIVE_THRESHOLD = 4.0  # MovieLens stars: 4 and up count as a positive (implicit feedback)
RATING_RANGE = (0.5, 5.0)


@dataclass(frozen=True)
class RecConfig:
    """What a recommender model is; stored as the model's config, so every reader sees the same."""

    dim: int = 32
    max_users: int = 2048  # table capacity: rows beyond the first version's are spare, for growth
    max_items: int = 16384
    positive_threshold: float = POSITIVE_THRESHOLD
    negatives: int = 4  # sampled negatives per positive (BPR, training)
    lr: float = 0.05  # online SGD step on touched rows
    # sampled negatives per positive in the online step. 16 beat 4 by 2% NDCG@10 on a validation window
    # before the bench's replay (bench/results/rec-tuning*.json) but lost by 1% on the replay itself, with
    # versions 3x larger: 4 stays
    online_negatives: int = 4
    weight_decay: float = 1e-4
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "rec", **asdict(self)}

    @staticmethod
    def of(config: dict[str, Any]) -> RecConfig:
        known = {k: v for k, v in config.items() if k in RecConfig.__dataclass_fields__}
        return RecConfig(**known)


@dataclass(frozen=True)
class Interaction:
    user: int
    item: int
    rating: float
    timestamp: int

    @property
    def key(self) -> tuple[int, int, int]:
        """What makes an interaction the same one sent again (counted once)."""
        return (self.user, self.item, self.timestamp)


@dataclass(frozen=True)
class Rejection:
    record: int  # 1-based position in the source
    reason: str
    raw: str = ""


@dataclass(frozen=True)
class Scored:
    item: int
    title: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    user: int
    version: int
    items: list[Scored]
    popular: bool  # True: the user is unknown to this version, so these are its most popular items

    def as_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "version": self.version,
            "popular_fallback": self.popular,
            "items": [asdict(s) for s in self.items],
        }


@dataclass
class StreamSummary:
    """in = applied + rejected, always; `reasons` counts rejections by kind."""

    read: int = 0
    applied: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    version_bytes: list[int] = field(default_factory=list)  # payload bytes of each committed version
    touched_bytes: list[int] = field(default_factory=list)  # bytes of the rows each version changed
    appended_users: int = 0
    appended_items: int = 0

    def reject(self, rejection: Rejection, kind: str) -> None:
        self.rejected += 1
        self.reasons[kind] = self.reasons.get(kind, 0) + 1
        if len(self.rejections) < 1000:  # a person reads the first ones; the counts hold them all
            self.rejections.append(rejection)

    def as_dict(self) -> dict[str, Any]:
        return {
            "in": self.read,
            "applied": self.applied,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "rejections": [asdict(r) for r in self.rejections[:20]],
            "versions": self.versions,
            "version_bytes": self.version_bytes,
            "touched_row_bytes": self.touched_bytes,
            "appended_users": self.appended_users,
            "appended_items": self.appended_items,
        }


class Recommender(Protocol):
    """One model served at one version; every answer names the version that produced it."""

    @property
    def version(self) -> int: ...
    def recommend(self, user: int, k: int = 10, exclude: frozenset[int] = frozenset()) -> Recommendation: ...


class RecClient(Protocol):
    """A recommender as a caller reaches it: a worker over gRPC, or one served in this process."""

    def recommend(self, user: int, k: int = 10, exclude: frozenset[int] = frozenset()) -> Recommendation: ...
    def close(self) -> None: ...
