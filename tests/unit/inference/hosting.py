"""A tiny model to serve from a store: seeded random Llama weights and a byte-level tokenizer, stored as
files the way an imported model keeps them, so a Host builds it from the store alone (in milliseconds)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from llmk.config import Settings
from llmk.domain import synthetic
from llmk.domain.versions import CommitInfo

from .conftest import CHAT_TEMPLATE, EOS, VOCAB, _byte_symbols

TEMPLATE = "Review: {text}\nSentiment:"
LABELS = ["positive", "negative", "neutral"]
TEXTS = ["great product, works well", "broke after a day", "it is a box", "I love it", "meh"]


def settings_for(home: Path, **overrides: Any) -> Settings:
    """Embedded settings independent of the caller's LLMK_* environment, sized for the tiny model."""
    values: dict[str, Any] = dict(
        home=home,
        database_url="",
        object_dir=None,
        broker_url="memory://",
        store_address="",
        inference_address="",
        auth_token="",
        listen="127.0.0.1:0",
        device="cpu",
        weight_budget=0,
        load_options="",
        max_sequences=4,
        max_context_tokens=512,
        max_wait_ms=2.0,
        version_poll_seconds=0,
        metrics_port=0,
        classify_template=TEMPLATE,
    )
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


def tokenizer_files() -> dict[str, bytes]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {symbol: b for b, symbol in _byte_symbols().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    wrapped.chat_template = CHAT_TEMPLATE
    with tempfile.TemporaryDirectory() as tmp:
        wrapped.save_pretrained(tmp)
        return {f.name: f.read_bytes() for f in Path(tmp).iterdir()}


def tiny_model(seed: int = 0) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = {
        **synthetic.llama_config("llama-tiny"),
        "vocab_size": VOCAB,
        "eos_token_id": EOS,
        "bos_token_id": None,
    }
    return config, synthetic.llama_tensors(config, seed)


def create_tiny(client: Any, name: str = "tiny", with_tokenizer: bool = True) -> int:
    """Store the tiny model as `name` (branch main); returns its first version id."""
    config, tensors = tiny_model()
    files = {**(tokenizer_files() if with_tokenizer else {}), "config.json": json.dumps(config).encode()}
    return int(client.create_model(name, tensors, config, files, CommitInfo(message="tiny")).id)


def perturbed(client: Any, name: str, names: list[str], seed: int) -> dict[str, torch.Tensor]:
    """New values for `names` at the head of main: a large random change, so versions answer differently."""
    current = client.fetch(name, "main", names=names)
    g = torch.Generator().manual_seed(seed)
    return {n: t + torch.randn(t.shape, generator=g) * t.abs().mean() for n, t in current.items()}
