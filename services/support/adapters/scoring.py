"""Reply log-likelihoods under one stored version, with the trainer's own model (the optimizer's
usecases.causal_lm), so the figure is the one the optimizer's gate would read. The message is formatted
as one user turn by the model's chat template; models stored without tokenizer files (synthetic ones) use
the inference tier's byte-level turn format, `user: ...` then `assistant: `."""

from __future__ import annotations

from typing import Any

import torch

from llmk.errors import InvalidInput
from services.optimizer.usecases.causal_lm import HfTokenizer, Scorer, Tokenizer, build_model, load_tokenizer
from services.store.interface import StoreClient
from services.support.interface import Pair


class StoredReplyScorer:
    """services.support.interface.ReplyScorer over `model` at `ref` (resolved once to a version id)."""

    def __init__(self, store: StoreClient, model: str, ref: str | None = None):
        self.version = store.version(model, ref).id
        record = store.model(model)
        files = {name: store.file(model, name) for name in record.files}
        self.tokenizer: Tokenizer = load_tokenizer(files, int(record.config.get("vocab_size", 0)))
        self.scorer = Scorer(build_model(record.config, store.fetch(model, str(self.version))))

    def reply_logprobs(self, pairs: list[Pair]) -> list[tuple[float, int]]:
        contexts = [self._prompt(p.instruction) for p in pairs]
        targets = [self.tokenizer.encode(p.response) for p in pairs]
        if any(not t for t in targets):
            raise InvalidInput("a reference reply encodes to no tokens")
        with torch.no_grad():
            sums = self.scorer.logprobs(contexts, targets)
        return [(float(s), len(t)) for s, t in zip(sums, targets, strict=True)]

    def _prompt(self, message: str) -> list[int]:
        turn = [{"role": "user", "content": message}]
        hf: Any = self.tokenizer.tokenizer if isinstance(self.tokenizer, HfTokenizer) else None
        if hf is not None and getattr(hf, "chat_template", None):
            text = hf.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        else:
            text = f"user: {message}\nassistant: "
        return self.tokenizer.encode(text)
