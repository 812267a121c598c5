"""Fixtures: a byte-level tokenizer, tiny seeded Llama and GPT-2 models, the real SmolLM2 (session-wide)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from services.inference.engine.model import Model, build_model

EOS = 256
VOCAB = 258  # 256 bytes, <eos>, <pad>
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def _byte_symbols() -> dict[int, str]:
    """GPT-2's printable stand-in for every byte, so token id == byte value."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = (b for b in range(256) if b not in printable)
    symbols = {b: chr(b) for b in printable}
    symbols.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return symbols


@pytest.fixture(scope="session")
def byte_tokenizer() -> Any:
    """One token per byte: multi-byte characters span several tokens, which exercises UTF-8 handling."""
    vocab = {symbol: b for b, symbol in _byte_symbols().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    wrapped.chat_template = CHAT_TEMPLATE
    assert wrapped.eos_token_id == EOS
    assert len(wrapped) == VOCAB
    return wrapped


@dataclass
class Pair:
    hf: PreTrainedModel
    ours: Model


def _pair(hf: PreTrainedModel) -> Pair:
    hf.eval()
    return Pair(hf, build_model(hf.config.to_dict(), hf.state_dict()))


def tiny_llama_pair() -> Pair:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        bos_token_id=None,
        eos_token_id=EOS,
        pad_token_id=None,
    )
    return _pair(LlamaForCausalLM(config))


def tiny_gpt2_pair() -> Pair:
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=256, bos_token_id=EOS, eos_token_id=EOS
    )
    return _pair(GPT2LMHeadModel(config))


@pytest.fixture(scope="session")
def tiny_llama() -> Pair:
    return tiny_llama_pair()


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny(request: pytest.FixtureRequest) -> Pair:
    """Each tiny model family in turn."""
    return tiny_llama_pair() if request.param == "llama" else tiny_gpt2_pair()
