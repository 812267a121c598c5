"""What one pass of the decoder attends to: its own new tokens, a slot of the KV cache, or a shared prefix,
at the positions the rotary embedding gives them.

Two kinds of remembered keys and values:
- `KVCache`, a fixed pool of sequence slots for continuous batching; each slot has its own length;
- `Prefix`, the keys and values of a prompt start that many rows share (a classify template's fixed text),
  computed once and attended by every row of a batch without being recomputed or copied per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from services.inference.engine.config import ModelConfig


class KVCache:
    """A fixed pool of sequence slots; each slot has its own length, so sequences that started at different
    times share one batched decode step."""

    def __init__(self, config: ModelConfig, n_slots: int, max_len: int, device: Any, dtype: torch.dtype):
        shape = (n_slots, config.n_kv_heads, max_len, config.head_dim)
        self.k = [_zeros(shape, device, dtype) for _ in range(config.n_layers)]
        self.v = [_zeros(shape, device, dtype) for _ in range(config.n_layers)]
        self.lengths = [0] * n_slots
        self.max_len = max_len

    def update(self, layer: int, step: Step, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the new keys/values at their positions, return each slot's cache up to the longest one."""
        # k, v: [B, Hkv, T, hd]; slots: [B]; positions: [B, T]
        assert step.slots is not None
        span = step.span
        if step.start is not None and step.slot_range is not None:  # one block of the cache: slices
            lo, hi = step.slot_range
            self.k[layer][lo:hi, :, step.start : step.start + k.shape[2]] = k
            self.v[layer][lo:hi, :, step.start : step.start + v.shape[2]] = v
            return self.k[layer][lo:hi, :, :span], self.v[layer][lo:hi, :, :span]
        rows, positions = step.slots[:, None].expand_as(step.positions), step.positions
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, T, Hkv, hd]
        if step.real is not None:
            rows, positions, k, v = rows[step.real], positions[step.real], k[step.real], v[step.real]
        self.k[layer][rows, :, positions] = k
        self.v[layer][rows, :, positions] = v
        if step.slot_range is not None:  # slots lo..hi-1 in order: views, no gathered copy
            lo, hi = step.slot_range
            return self.k[layer][lo:hi, :, :span], self.v[layer][lo:hi, :, :span]
        # returns: [B, Hkv, S, hd]
        return self.k[layer][step.slots, :, :span], self.v[layer][step.slots, :, :span]


def _zeros(shape: tuple[int, ...], device: Any, dtype: torch.dtype) -> Tensor:
    """Zeros that cost memory only where written, on the CPU: a large calloc maps the OS's zero pages, so
    slots and lengths never used stay out of the process's RSS (torch.zeros writes every byte)."""
    if torch.device(device).type != "cpu" or not math.prod(shape):
        return torch.zeros(shape, device=device, dtype=dtype)
    raw = torch.from_numpy(np.zeros(math.prod(shape) * dtype.itemsize, dtype=np.uint8))  # numpy callocs
    return raw.view(dtype).view(shape)


@dataclass
class Prefix:
    """Keys and values of a shared prompt start: one [1, Hkv, P, hd] pair per layer."""

    tokens: list[int]
    k: list[Tensor] = field(default_factory=list)
    v: list[Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.tokens)


@dataclass
class Step:
    """What one pass attends to: the new tokens' positions, the mask, and the cache slots or prefix if any."""

    positions: Tensor  # [B, T]
    mask: Tensor | None  # [B, 1, T, S] additive float mask: 0 where a query may attend a key, -inf elsewhere
    rope: tuple[Tensor, Tensor] | None = None  # cos, signed sin: [B, T, 1, hd], see RopeTable
    cache: KVCache | None = None
    slots: Tensor | None = None  # [B]
    slot_range: tuple[int, int] | None = None  # set when the slots are lo..hi-1 in order: no gather needed
    real: Tensor | None = None  # [B, T] bool, False for padding, which is not written to the cache
    prefix: Prefix | None = None  # attended before the new tokens; S = prefix length + T
    record: Prefix | None = None  # when set, each layer's new keys and values are appended to it
    span: int = 0  # cached keys attended: S
    start: int | None = None  # set when the slots are in order and every row's tokens start here


def additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean mask (True where attending is allowed) as the additive mask SDPA runs fastest with."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, float("-inf"))


def padded_causal(valid: Tensor, prefix_length: int, dtype: torch.dtype) -> Tensor:
    """The additive mask [B, 1, T, P + T] of a causal pass over padded rows that continue a prefix of P."""
    # valid: [B, T], False at padding (either side)
    T, device = valid.shape[1], valid.device
    idx = torch.arange(T, device=device)
    causal = idx[None, :] <= idx[:, None]  # [T, T]
    # A padded query attends to itself alone so its row is never empty (no NaN); it is ignored anyway.
    mask = (causal & valid[:, None, :]) | torch.eye(T, dtype=torch.bool, device=device)  # [B, T, T]
    if prefix_length:
        mask = torch.cat((mask.new_ones(mask.shape[0], T, prefix_length), mask), dim=-1)  # [B, T, P + T]
    return additive(mask[:, None], dtype)


class RopeTable:
    """cos and sin of every position below `n`, computed once (as Hugging Face's Llama computes them per
    pass), so a decode step looks its positions up instead of recomputing them.

    The sin's first half is stored negated: rotating a head's halves (x1, x2) to (-x2, x1) and multiplying
    by sin is then (x2, x1) times the signed sin, bit for bit the same, one kernel fewer per layer."""

    def __init__(self, n: int, head_dim: int, theta: float, dtype: torch.dtype, device: Any):
        exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
        inv_freq = 1.0 / (theta**exponents)  # [hd / 2]
        freqs = torch.arange(n, device=device, dtype=torch.float32)[:, None] * inv_freq  # [n, hd / 2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [n, hd]
        self.cos = angles.cos().to(dtype)
        self.signed_sin = angles.sin().to(dtype)
        self.signed_sin[:, : head_dim // 2].neg_()
        self.length = n

    @staticmethod
    def covering(table: RopeTable | None, n: int, config: ModelConfig, like: Tensor) -> RopeTable:
        """`table` if it holds `n` positions in `like`'s dtype and device, else a new one (twice as long)."""
        if (
            table is not None
            and table.length >= n
            and table.cos.dtype == like.dtype
            and table.cos.device == like.device
        ):
            return table
        n = max(n, 2 * table.length if table is not None else 0)
        return RopeTable(n, config.head_dim, config.rope_theta, like.dtype, like.device)

    def at(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        # positions: [B, T] -> cos, signed sin: [B, T, 1, hd]
        return self.cos[positions].unsqueeze(2), self.signed_sin[positions].unsqueeze(2)


def apply_rope(x: Tensor, cos_sin: tuple[Tensor, Tensor]) -> Tensor:
    # x: [B, T, H, hd]; rotates the two halves of each head, as Hugging Face's Llama does
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos_sin[0] + torch.cat((x2, x1), dim=-1) * cos_sin[1]


def attend(q: Tensor, k: Tensor, v: Tensor, step: Step, layer: int) -> Tensor:
    # q: [B, H, T, hd]; k, v: [B, Hkv, T, hd]
    if step.record is not None:
        step.record.k.append(k)
        step.record.v.append(v)
    if step.cache is not None:
        k, v = step.cache.update(layer, step, k, v)  # k, v: [B, Hkv, S, hd]
    elif step.prefix is not None:
        B = q.shape[0]
        pk, pv = step.prefix.k[layer], step.prefix.v[layer]  # [1, Hkv, P, hd]
        k = torch.cat((pk.expand(B, -1, -1, -1), k), dim=2)  # [B, Hkv, P + T, hd]
        v = torch.cat((pv.expand(B, -1, -1, -1), v), dim=2)
    gqa = q.shape[1] != k.shape[1]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.mask, enable_gqa=gqa)  # y: [B, H, T, hd]
    return y.transpose(1, 2).flatten(2)  # [B, T, H * hd]
