"""The first version of a recommender: BPR over a ratings file, stepped by the kernel's optimizer.

Bayesian personalized ranking (Rendle et al., 2009): for a user's positive item p and a sampled item n,
minimise softplus(-(u.(v_p - v_n) + b_p - b_n)). Gradients come from autograd over the gathered rows; the
step is llmk.domain.optim.optimizer_step (Adam) over the used part of each table, so training uses the same
optimizer arithmetic as the optimizer tier. Everything is seeded: the same file and config give the same
tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmk.domain.optim import OptimizerSpec, optimizer_step
from llmk.errors import InvalidInput
from services.rec.interface import Interaction, RecConfig
from services.rec.usecases.model import (
    ITEM_BIAS,
    ITEM_EMBEDDING,
    ITEM_POSITIVES,
    USER_EMBEDDING,
    Tables,
    empty_tensors,
)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 0.01
    init_scale: float = 0.1


def fit(ratings: Sequence[Interaction], config: RecConfig, spec: TrainSpec) -> Tables:
    """Tables holding every user and item of `ratings`, trained on its positives."""
    if spec.epochs < 0 or spec.batch_size < 1:
        raise InvalidInput(f"epochs must be >= 0 and batch size >= 1, got {spec.epochs}, {spec.batch_size}")
    tables = Tables(empty_tensors(config), config)
    pairs = []
    for r in ratings:
        user, item = tables.user_row(r.user), tables.item_row(r.item)
        if r.rating >= config.positive_threshold:
            pairs.append((user, item))
            tables.t[ITEM_POSITIVES][item] += 1
    if not pairs:
        raise InvalidInput(f"the ratings hold no positive (rating >= {config.positive_threshold})")
    generator = torch.Generator().manual_seed(config.seed)
    n_users, n_items = len(tables.users), len(tables.items)
    params = {
        "user": torch.randn(n_users, config.dim, generator=generator) * spec.init_scale,
        "item": torch.randn(n_items, config.dim, generator=generator) * spec.init_scale,
        "bias": torch.zeros(n_items),
    }
    _bpr_epochs(params, torch.tensor(pairs), config, spec, generator)
    tables.t[USER_EMBEDDING][:n_users] = params["user"]
    tables.t[ITEM_EMBEDDING][:n_items] = params["item"]
    tables.t[ITEM_BIAS][:n_items] = params["bias"]
    tables.take_changes()  # the first version stores every tensor in full
    return tables


def _bpr_epochs(
    params: dict[str, Tensor], pairs: Tensor, config: RecConfig, spec: TrainSpec, generator: torch.Generator
) -> None:
    optimizer = OptimizerSpec(kind="adam", lr=spec.lr)
    state: dict[str, Tensor] = {}
    n_items = params["item"].shape[0]
    for _ in range(spec.epochs):
        order = torch.randperm(pairs.shape[0], generator=generator)
        for start in range(0, order.numel(), spec.batch_size):
            batch = pairs[order[start : start + spec.batch_size]]  # [B, 2]: user row, positive item row
            negatives = torch.randint(n_items, (batch.shape[0], config.negatives), generator=generator)
            grads = bpr_gradients(params, batch[:, 0], batch[:, 1], negatives, config.weight_decay)
            for name, delta in optimizer_step(optimizer, params, grads, state).items():
                params[name].add_(delta)


def bpr_gradients(
    params: dict[str, Tensor], users: Tensor, positives: Tensor, negatives: Tensor, weight_decay: float
) -> dict[str, Tensor]:
    """Gradients of the mean BPR loss plus L2 on the rows used; users[B], positives[B], negatives[B, K]."""
    leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
    u, v, b = leaves["user"], leaves["item"], leaves["bias"]
    user = u[users]  # [B, D]
    pos_score = (user * v[positives]).sum(-1) + b[positives]  # [B]
    neg_score = torch.einsum("bd,bkd->bk", user, v[negatives]) + b[negatives]  # [B, K]
    loss = F.softplus(neg_score - pos_score[:, None]).mean()
    l2 = user.square().sum() + v[positives].square().sum() + v[negatives].square().sum()
    loss = loss + weight_decay * l2 / users.numel()
    found = torch.autograd.grad(loss, [u, v, b])
    return dict(zip(("user", "item", "bias"), found, strict=True))


def bpr_row_gradients(user: Tensor, items: Tensor, bias: Tensor, weight_decay: float) -> dict[str, Tensor]:
    """The gradients of bpr_gradients for one user and one positive (items[0], bias[0]) against the
    negatives items[1:], in closed form: the online step runs this once per interaction, and autograd's
    graph costs more than the arithmetic. user[1, D], items[1 + K, D], bias[1 + K]."""
    scores = items @ user[0] + bias  # [1 + K]
    g = torch.sigmoid(scores[1:] - scores[0]) / (scores.numel() - 1)  # d loss / d negative score, [K]
    d_scores = torch.cat([-g.sum()[None], g])  # [1 + K]
    decay = 2 * weight_decay
    return {
        "user": (d_scores @ items)[None, :] + decay * user,
        "item": d_scores[:, None] * user + decay * items,
        "bias": d_scores,
    }
