"""Reading a Hugging Face config.json into the numbers the decoder needs; refusing what it would get wrong."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmk.errors import InvalidInput


@dataclass(frozen=True)
class ModelConfig:
    family: str  # "llama" | "gpt2"
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    max_positions: int
    norm_eps: float
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> ModelConfig:
        """Read a Hugging Face config.json dict; refuse what this decoder would silently get wrong."""
        family = config.get("model_type")
        if family == "llama":
            return cls._from_llama(config)
        if family == "gpt2":
            return cls._from_gpt2(config)
        raise InvalidInput(f"unsupported model_type {family!r}: expected 'llama' or 'gpt2'")

    @classmethod
    def _from_llama(cls, c: Mapping[str, Any]) -> ModelConfig:
        rope = c.get("rope_parameters") or {}
        scaling = c.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
        if rope_type != "default":
            raise InvalidInput(f"unsupported rope type {rope_type!r}")
        if c.get("hidden_act", "silu") != "silu":
            raise InvalidInput(f"unsupported hidden_act {c['hidden_act']!r}")
        dim, n_heads = c["hidden_size"], c["num_attention_heads"]
        return cls(
            family="llama",
            vocab_size=c["vocab_size"],
            dim=dim,
            n_layers=c["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=c.get("num_key_value_heads") or n_heads,
            head_dim=c.get("head_dim") or dim // n_heads,
            hidden_dim=c["intermediate_size"],
            max_positions=c.get("max_position_embeddings", 2048),
            norm_eps=c.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta") or c.get("rope_theta") or 10000.0),
            tie_embeddings=bool(c.get("tie_word_embeddings", False)),
            attention_bias=bool(c.get("attention_bias", False)),
            mlp_bias=bool(c.get("mlp_bias", False)),
        )

    @classmethod
    def _from_gpt2(cls, c: Mapping[str, Any]) -> ModelConfig:
        if c.get("activation_function", "gelu_new") != "gelu_new":
            raise InvalidInput(f"unsupported activation_function {c['activation_function']!r}")
        if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
            raise InvalidInput("unsupported GPT-2 attention scaling")
        dim, n_heads = c["n_embd"], c["n_head"]
        return cls(
            family="gpt2",
            vocab_size=c["vocab_size"],
            dim=dim,
            n_layers=c["n_layer"],
            n_heads=n_heads,
            n_kv_heads=n_heads,
            head_dim=dim // n_heads,
            hidden_dim=c.get("n_inner") or 4 * dim,
            max_positions=c.get("n_positions", 1024),
            norm_eps=c.get("layer_norm_epsilon", 1e-5),
            tie_embeddings=bool(c.get("tie_word_embeddings", True)),
            attention_bias=True,
            mlp_bias=True,
        )
