"""The customer-service demo's splits, all from the data shipped in services/support/data.

Replies: `bitext-train.csv` (rows the held-out rule leaves to training) gives the conversations sent
through the gateway (their reference replies come back as agents' corrections) and, after them, a dev split
the replies job's gate reads; `bitext-heldout.csv` (the rule's rows) is what each version is measured on.
Intents: `banking77/train.csv` rows train the baselines, `banking77/heldout.csv` rows measure them all.
No row is in two splits: the held-out files are disjoint from the training files by construction, and
the conversations and the dev split are disjoint slices of one shuffle.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from llmk.domain.intents import banking77_label
from llmk.errors import InvalidInput
from services.support.interface import Pair

DATA = Path(__file__).resolve().parents[1] / "data"
BITEXT_TRAIN, BITEXT_HELDOUT = DATA / "bitext-train.csv", DATA / "bitext-heldout.csv"
BANKING_TRAIN, BANKING_HELDOUT = DATA / "banking77" / "train.csv", DATA / "banking77" / "heldout.csv"
T = TypeVar("T")


@dataclass(frozen=True)
class Sizes:
    conversations: int  # sent through the gateway, their reference replies sent back as corrections
    dev: int  # the replies job's gate
    held_out: int  # held-out conversations every measured version is scored on
    intent_train: int  # banking77 rows the intent baselines train on
    intent_held_out: int  # banking77 held-out messages every intent figure is measured on


@dataclass(frozen=True)
class Splits:
    conversations: list[Pair]
    dev: list[Pair]
    held_out: list[Pair]
    intent_train: list[tuple[str, str]]  # (message, label as the task writes it)
    intent_held_out: list[tuple[str, str]]


def pairs(path: Path) -> list[Pair]:
    with path.open(newline="", encoding="utf-8") as f:
        return [Pair(r["instruction"], r["response"]) for r in csv.DictReader(f)]


def intents(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [(r["text"], banking77_label(r["category"])) for r in csv.DictReader(f)]


def make_splits(sizes: Sizes, seed: int) -> Splits:
    """Seeded samples of each file; InvalidInput when a size asks for more rows than the file has."""
    for name, n in vars(sizes).items():
        if n < 1:
            raise InvalidInput(f"--{name.replace('_', '-')} must be at least 1, got {n}")
    train, held = _shuffled(pairs(BITEXT_TRAIN), seed), _shuffled(pairs(BITEXT_HELDOUT), seed)
    banking, banking_held = _shuffled(intents(BANKING_TRAIN), seed), _shuffled(intents(BANKING_HELDOUT), seed)
    wanted = {
        "conversations + dev": (sizes.conversations + sizes.dev, len(train), BITEXT_TRAIN),
        "held-out": (sizes.held_out, len(held), BITEXT_HELDOUT),
        "intent-train": (sizes.intent_train, len(banking), BANKING_TRAIN),
        "intent-held-out": (sizes.intent_held_out, len(banking_held), BANKING_HELDOUT),
    }
    for name, (n, have, path) in wanted.items():
        if n > have:
            raise InvalidInput(f"--{name} asks for {n} rows; {path.name} has {have}")
    conversations, dev = train[: sizes.conversations], train[sizes.conversations :][: sizes.dev]
    seen = {p.instruction for p in conversations + dev}
    if any(p.instruction in seen for p in held):  # the shipped files' rule: never measure on trained rows
        raise InvalidInput(f"{BITEXT_HELDOUT.name} shares messages with {BITEXT_TRAIN.name}")
    return Splits(
        conversations,
        dev,
        held[: sizes.held_out],
        banking[: sizes.intent_train],
        banking_held[: sizes.intent_held_out],
    )


def _shuffled(rows: list[T], seed: int) -> list[T]:
    random.Random(seed).shuffle(rows)
    return rows
