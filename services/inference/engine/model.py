"""A compact decoder for the Llama and GPT-2 families, read top-down (config, cache, blocks, model, loading).

We keep our own implementation rather than transformers' classes because the inference tier needs control
that those classes hide: a KV cache laid out as a fixed pool of slots for continuous batching, parameters
addressed by their Hugging Face names so a delta from the store is applied in place by name, and a layer
loop that a later step can wrap to offload weights layer by layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmk.errors import InvalidInput
from services.inference.engine.attention import (
    KVCache,
    Prefix,
    RopeTable,
    Step,
    additive,
    apply_rope,
    attend,
    padded_causal,
)
from services.inference.engine.config import ModelConfig
from services.inference.engine.fusing import FileMaps, fuse_linears

# Buffers some checkpoints carry that are derived from the config, not learned: safe to ignore when loading.
_DERIVED_BUFFERS = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # Normalise in float32 as Hugging Face does, so half-precision logits match theirs.
        if x.dtype == torch.float32:  # the same arithmetic, two no-op conversions fewer per call
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Conv1D(nn.Module):
    """GPT-2's linear layer: the weight is stored [in, out], the transpose of nn.Linear's."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.flatten(0, -2), self.weight).view(*x.shape[:-1], -1)


class LlamaAttention(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.q_proj = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=c.attention_bias)
        self.layer, self.head_dim, self.n_heads, self.n_kv_heads = layer, c.head_dim, c.n_heads, c.n_kv_heads
        self.qkv: tuple[Tensor, Tensor | None] | None = None  # [q; k; v] weight and bias, see fuse()

    def fuse(self, files: FileMaps) -> None:
        self.qkv = fuse_linears([self.q_proj, self.k_proj, self.v_proj], files)

    def forward(self, x: Tensor, step: Step) -> Tensor:
        # x: [B, T, D]
        B, T, _ = x.shape
        assert step.rope is not None
        if self.qkv is not None and not torch.is_grad_enabled():  # the fused weights carry no gradient
            qkv = F.linear(x, *self.qkv).view(B, T, -1, self.head_dim)  # [B, T, H + 2 Hkv, hd]
            qk = apply_rope(qkv[:, :, : self.n_heads + self.n_kv_heads], step.rope)
            q, k, v = qk[:, :, : self.n_heads], qk[:, :, self.n_heads :], qkv[:, :, -self.n_kv_heads :]
        else:
            q = apply_rope(self.q_proj(x).view(B, T, -1, self.head_dim), step.rope)  # [B, T, H, hd]
            k = apply_rope(self.k_proj(x).view(B, T, -1, self.head_dim), step.rope)  # [B, T, Hkv, hd]
            v = self.v_proj(x).view(B, T, -1, self.head_dim)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H or Hkv, T, hd]
        return self.o_proj(attend(q, k, v, step, self.layer))


class LlamaMLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.dim, c.hidden_dim, bias=c.mlp_bias)
        self.up_proj = nn.Linear(c.dim, c.hidden_dim, bias=c.mlp_bias)
        self.down_proj = nn.Linear(c.hidden_dim, c.dim, bias=c.mlp_bias)
        self.gate_up: tuple[Tensor, Tensor | None] | None = None  # [gate; up] weight and bias, see fuse()

    def fuse(self, files: FileMaps) -> None:
        self.gate_up = fuse_linears([self.gate_proj, self.up_proj], files)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate_up is not None and not torch.is_grad_enabled():
            gate, up = F.linear(x, *self.gate_up).chunk(2, dim=-1)  # [B, T, hidden] each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class LlamaBlock(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.self_attn = LlamaAttention(c, layer)
        self.mlp = LlamaMLP(c)
        self.input_layernorm = RMSNorm(c.dim, c.norm_eps)
        self.post_attention_layernorm = RMSNorm(c.dim, c.norm_eps)

    def forward(self, x: Tensor, step: Step) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), step)
        return x + self.mlp(self.post_attention_layernorm(x))


class Gpt2Attention(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.c_attn = Conv1D(c.dim, 3 * c.dim)
        self.c_proj = Conv1D(c.dim, c.dim)
        self.layer, self.head_dim = layer, c.head_dim

    def forward(self, x: Tensor, step: Step) -> Tensor:
        # x: [B, T, D]
        B, T, D = x.shape
        q, k, v = (t.view(B, T, -1, self.head_dim).transpose(1, 2) for t in self.c_attn(x).split(D, dim=-1))
        return self.c_proj(attend(q, k, v, step, self.layer))


class Gpt2MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c_fc = Conv1D(c.dim, c.hidden_dim)
        self.c_proj = Conv1D(c.hidden_dim, c.dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Gpt2Block(nn.Module):
    def __init__(self, c: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.attn = Gpt2Attention(c, layer)
        self.ln_2 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.mlp = Gpt2MLP(c)

    def forward(self, x: Tensor, step: Step) -> Tensor:
        x = x + self.attn(self.ln_1(x), step)
        return x + self.mlp(self.ln_2(x))


class LlamaBody(nn.Module):
    """Everything under Hugging Face's `model.` prefix."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(LlamaBlock(c, i) for i in range(c.n_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)

    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.embed_tokens(tokens)


class Gpt2Body(nn.Module):
    """Everything under Hugging Face's `transformer.` prefix."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.wte = nn.Embedding(c.vocab_size, c.dim)
        self.wpe = nn.Embedding(c.max_positions, c.dim)
        self.h = nn.ModuleList(Gpt2Block(c, i) for i in range(c.n_layers))
        self.ln_f = nn.LayerNorm(c.dim, eps=c.norm_eps)

    @property
    def layers(self) -> nn.ModuleList:
        return self.h

    @property
    def norm(self) -> nn.Module:
        return self.ln_f

    def embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        return self.wte(tokens) + self.wpe(positions)


class Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.body_name = "model" if config.family == "llama" else "transformer"
        body = LlamaBody(config) if config.family == "llama" else Gpt2Body(config)
        self.add_module(self.body_name, body)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.cache: KVCache | None = None
        self._rope: RopeTable | None = None  # cos and sin by position, kept across passes

    @property
    def body(self) -> LlamaBody | Gpt2Body:
        return getattr(self, self.body_name)

    @property
    def layers(self) -> nn.ModuleList:
        return self.body.layers

    def fuse(self) -> None:
        """Fuse each Llama layer's q/k/v and gate/up projections (one matmul each) for inference."""
        files = FileMaps()
        for m in self.modules():
            if isinstance(m, LlamaAttention | LlamaMLP):
                m.fuse(files)

    def unfuse(self) -> None:
        """Run each projection on its own weight again: before anything replaces a weight tensor wholesale
        (pruning, int8, offloading, a move), after which the fused weight would be stale."""
        for m in self.modules():
            if isinstance(m, LlamaAttention):
                m.qkv = None
            elif isinstance(m, LlamaMLP):
                m.gate_up = None

    def _apply(self, fn: Any, recurse: bool = True) -> Model:
        self.unfuse()  # .to(), .half(), .cuda() replace every tensor
        return super()._apply(fn, recurse)

    def run_layers(self, x: Tensor, step: Step) -> Tensor:
        """The one place the decoder layers run, so offloading can wrap it layer by layer."""
        for layer in self.layers:
            x = layer(x, step)
        return x

    def _hidden(self, tokens: Tensor, step: Step, bound: int) -> Tensor:
        # tokens: [B, T] -> x: [B, T, D], after the final norm; every position is below `bound`
        if self.config.family == "llama":
            self._rope = table = RopeTable.covering(self._rope, bound, self.config, self.lm_head.weight)
            step.rope = table.at(step.positions)
        x = self.body.embed(tokens, step.positions)
        return self.body.norm(self.run_layers(x, step))

    def features(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, prefix: Prefix | None = None
    ) -> Tensor:
        """Final hidden states [B, T, D] without a cache; padding may sit on either side.

        With a `prefix`, each row continues that shared start: its keys and values are read, not rerun."""
        # input_ids, attention_mask: [B, T]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        P = prefix.length if prefix is not None else 0
        positions = P + (valid.long().cumsum(-1) - 1).clamp(min=0)  # [B, T]
        step = Step(positions=positions, mask=padded_causal(valid, P, self._dtype), prefix=prefix)
        return self._hidden(input_ids, step, P + input_ids.shape[1])

    def encode_prefix(self, token_ids: Sequence[int]) -> Prefix:
        """The keys and values of a prompt start that many later passes continue (see `features`)."""
        tokens = torch.as_tensor(token_ids, device=self.lm_head.weight.device).view(1, -1)
        T = tokens.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        prefix = Prefix(list(token_ids))
        step = Step(positions=torch.arange(T, device=tokens.device)[None], mask=additive(causal, self._dtype))
        step.record = prefix
        self._hidden(tokens, step, T)
        return prefix

    def tree_features(
        self, token_ids: Sequence[int], depths: Sequence[int], allowed: Tensor, prefix: Prefix | None
    ) -> Tensor:
        """Final hidden states [N, D] of a tree of tokens continuing `prefix` in one row: token i sits
        `depths[i]` after the prefix and attends the prefix and the tokens `allowed[i]` marks ([N, N] bool:
        its ancestors and itself), so branches that share a start compute it once."""
        device = self.lm_head.weight.device
        P = prefix.length if prefix is not None else 0
        tokens = torch.as_tensor(token_ids, device=device).view(1, -1)
        positions = (P + torch.as_tensor(depths, device=device)).view(1, -1)
        seen = torch.cat((allowed.new_ones(allowed.shape[0], P), allowed), dim=-1)  # [N, P + N]
        step = Step(positions=positions, mask=additive(seen[None, None], self._dtype), prefix=prefix)
        return self._hidden(tokens, step, P + max(depths) + 1)[0]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits [B, T, V] for every position; differentiable, used by classification and training."""
        return self.lm_head(self.features(input_ids, attention_mask))

    @property
    def _dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def setup_cache(self, n_slots: int, max_len: int) -> None:
        weight = self.lm_head.weight
        self.cache = KVCache(self.config, n_slots, max_len, weight.device, weight.dtype)

    def prefill_batch(self, slots: Sequence[int], token_ids: Sequence[Sequence[int]]) -> Tensor:
        """Append each row of tokens to its slot's sequence in one padded pass; rows may differ in length.

        Returns the logits [B, V] that predict each row's next token."""
        cache = self._need_cache()
        device = self.lm_head.weight.device
        n = torch.tensor([len(t) for t in token_ids], device=device)  # [B]
        tokens = torch.nn.utils.rnn.pad_sequence(
            [torch.as_tensor(t, device=device) for t in token_ids], batch_first=True
        )  # [B, T]
        lengths = [cache.lengths[s] for s in slots]
        starts = torch.tensor(lengths, device=device)
        if int((starts + n).max()) > cache.max_len:
            raise InvalidInput(f"sequence would exceed the cache length {cache.max_len}")
        offsets = torch.arange(tokens.shape[1], device=device)
        real = offsets < n[:, None]  # [B, T]; padding is neither written to the cache nor read
        positions = (starts[:, None] + offsets).clamp(max=cache.max_len - 1)
        same = lengths[0] if len(set(lengths)) == 1 else None
        x = self._run_cached(slots, tokens, positions, None if bool(real.all()) else real, same)  # [B, T, D]
        for s, length in zip(slots, n.tolist(), strict=True):
            cache.lengths[s] += length
        return self.lm_head(x[torch.arange(len(slots), device=device), n - 1])

    def prefill(self, slot: int, token_ids: Sequence[int] | Tensor) -> Tensor:
        """Append tokens to one slot's sequence; return the logits [V] that predict the next token."""
        ids = token_ids.tolist() if isinstance(token_ids, Tensor) else list(token_ids)
        return self.prefill_batch([slot], [ids])[0]

    def decode_step(self, slots: Sequence[int], last_tokens: Sequence[int] | Tensor) -> Tensor:
        """One token for each slot, each at its own position; returns next-token logits [B, V]."""
        cache = self._need_cache()
        device = self.lm_head.weight.device
        tokens = torch.as_tensor(last_tokens, device=device).view(-1, 1)
        lengths = [cache.lengths[s] for s in slots]
        if max(lengths) + 1 > cache.max_len:
            raise InvalidInput(f"sequence would exceed the cache length {cache.max_len}")
        same = lengths[0] if len(set(lengths)) == 1 else None
        x = self._run_cached(slots, tokens, torch.tensor(lengths, device=device)[:, None], start=same)
        for s in slots:
            cache.lengths[s] += 1
        return self.lm_head(x[:, -1])

    def _need_cache(self) -> KVCache:
        if self.cache is None:
            raise RuntimeError("call setup_cache() before prefill or decode_step")
        return self.cache

    def _run_cached(
        self,
        slots: Sequence[int],
        tokens: Tensor,
        positions: Tensor,
        real: Tensor | None = None,
        start: int | None = None,
    ) -> Tensor:
        """`start`: every row's tokens start at this position (slots of equal length), which lets one
        token per row attend every cached key with no mask at all."""
        # tokens, positions, real: [B, T] -> final hidden states [B, T, D]; keys up to each query's position
        device = tokens.device
        span = int(positions.max()) + 1 if start is None else start + tokens.shape[1]
        mask = None
        if start is None or tokens.shape[1] > 1:
            allowed = torch.arange(span, device=device) <= positions[..., None]  # [B, T, S]
            mask = additive(allowed[:, None], self._dtype)
        lo = slots[0]
        in_order = list(slots) == list(range(lo, lo + len(slots)))
        step = Step(
            positions=positions,
            mask=mask,
            cache=self.cache,
            slots=torch.tensor(list(slots), device=device),
            slot_range=(lo, lo + len(slots)) if in_order else None,
            real=real,
            span=span,
            start=start if in_order and real is None else None,
        )
        return self._hidden(tokens, step, self._need_cache().max_len)

    def free_slot(self, slot: int) -> None:
        """Forget a slot's sequence; stale keys beyond a slot's length are masked, so nothing is cleared."""
        if self.cache is not None:
            self.cache.lengths[slot] = 0


def build_model(
    config: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    device: Any = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Model:
    """Build on the meta device (no wasted init), then adopt the tensors under their Hugging Face names.

    Tensors already on `device` in `dtype` are shared, not copied, except the projections that are fused
    (copied into one weight per layer; their names then address views of it)."""
    cfg = ModelConfig.from_hf(config)
    with torch.device("meta"):
        model = Model(cfg)
    expected = set(model.state_dict())
    state = {n: t.to(device=device, dtype=dtype) for n, t in tensors.items() if n in expected}
    embed_name = f"{model.body_name}.{'embed_tokens' if cfg.family == 'llama' else 'wte'}.weight"
    if cfg.tie_embeddings and embed_name in state:
        state.setdefault("lm_head.weight", state[embed_name])
    unexpected = [n for n in tensors if n not in expected and not n.endswith(_DERIVED_BUFFERS)]
    missing = sorted(expected - state.keys())
    if missing or unexpected:
        raise InvalidInput(
            f"state dict does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.load_state_dict(state, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.get_parameter(embed_name)
    model.fuse()
    return model.eval()
