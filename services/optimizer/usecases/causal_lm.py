"""A trainable Hugging Face causal LM rebuilt from a stored version: config + tensors + tokenizer files.

The optimizer trains with transformers' own model classes (the inference tier has its own decoder; tiers
share no code). Only the scoring primitive lives here: the log-probability of target tokens after a context.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from llmk.domain.names import check_file_name
from llmk.errors import InvalidInput

if TYPE_CHECKING:
    from services.optimizer.interface import Example

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """One token per UTF-8 byte, for models stored without tokenizer files (synthetic test models)."""

    def __init__(self, vocab_size: int):
        if vocab_size < 256:
            raise InvalidInput(f"a byte-level tokenizer needs a vocabulary of 256 or more, not {vocab_size}")

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode(errors="replace")  # as the served decoder: a cut character is "\ufffd"


class HfTokenizer:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))


def load_tokenizer(files: Mapping[str, bytes], vocab_size: int) -> Tokenizer:
    """The model's own tokenizer from its stored files, or byte-level when it has none."""
    if not any(name in files for name in TOKENIZER_FILES):
        return ByteTokenizer(vocab_size)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            check_file_name(name)  # the store refuses such names; a reader never trusts that alone
            (Path(tmp) / name).write_bytes(data)
        return HfTokenizer(AutoTokenizer.from_pretrained(tmp))


def build_model(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> Any:
    """A transformers causal LM holding exactly `tensors` (tied embeddings re-tied), in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights  # type: ignore[attr-defined,no-redef]

    settings = dict(config)
    model_type = settings.pop("model_type", None)
    if not model_type:
        raise InvalidInput("the model's config has no model_type; cannot build it for training")
    hf_config = AutoConfig.for_model(model_type, **settings)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(dict(tensors), strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise InvalidInput(
            f"stored tensors do not fit a {model_type} model: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    model.requires_grad_(False)
    return model.eval()


Tokens = tuple[int, ...]


class Scorer:
    """Log-probabilities of target tokens after contexts, batched, for one model.

    When only the layers from `split` up can change (every trainable tensor lives there), what the layers
    below make of a token sequence never changes either: it is computed once and kept (up to `cache_bytes`),
    so re-scoring a batch after an update, or the held-out set after every step, runs only the top layers.
    """

    def __init__(self, model: Any, split: int = 0, cache_bytes: int = 512 << 20):
        self.model = model
        self.split = split if _layered(model) else 0
        self.cache_bytes = cache_bytes
        self._cache: dict[Tokens, Tensor] = {}
        self._cached = 0

    def logprobs(self, contexts: Sequence[list[int]], targets: Sequence[list[int]]) -> Tensor:
        """Sum of log p(target | context) for each pair: shape [n].

        Pairs whose model input (context + target minus its last token) is the same share one row, so
        scoring single-token labels costs one row per example whatever the number of labels.
        """
        keys = [tuple(c + t[:-1]) for c, t in zip(contexts, targets, strict=True)]
        rows = {key: i for i, key in enumerate(dict.fromkeys(keys))}
        keep = max(len(t) for t in targets)
        logp = self._last_logits(list(rows), keep).log_softmax(-1)  # [U, K, V]
        scores = []
        for key, target in zip(keys, targets, strict=True):
            picked = logp[rows[key], keep - len(target) :]  # [len(target), V]
            scores.append(picked.gather(1, torch.tensor(target)[:, None]).sum())
        return torch.stack(scores)

    def share_cache(self, other: Scorer) -> None:
        """Use `other`'s cache of frozen-layer outputs (same model below the same split), e.g. to compare
        several training recipes without recomputing what none of them changes."""
        if other.split != self.split:
            raise InvalidInput(f"cannot share a cache split at layer {other.split} with one at {self.split}")
        self._cache, self._cached = other._cache, other._cached

    def last_hidden(self, sequences: Sequence[list[int]]) -> Tensor:
        """The final (normed) hidden state at each sequence's last token, whole model: [B, D]."""
        ids, mask, positions = _left_pad([tuple(s) for s in sequences])
        with torch.no_grad():
            out = self.model.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            )
        return out.last_hidden_state[:, -1].float()

    def _last_logits(self, sequences: list[Tokens], keep: int) -> Tensor:
        """Logits of the last `keep` positions of each sequence, left-padded into one batch: [B, keep, V]."""
        ids, mask, positions = _left_pad(sequences)
        inputs: dict[str, Tensor] = {"input_ids": ids}
        layers = slice(0, None)
        if self.split:
            inputs = {"inputs_embeds": _pad_left(self._below(sequences), ids.shape[1])}
            layers = slice(self.split, None)
        with _only(self.model, layers, norm=True):
            out = self.model(
                **inputs, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False
            )
        return out.logits.float()

    def _below(self, sequences: list[Tokens]) -> list[Tensor]:
        """What the frozen layers under `split` output for each sequence: [len, D] each."""
        fresh: dict[Tokens, Tensor] = {}
        missing = [s for s in sequences if s not in self._cache]
        if missing:
            ids, mask, positions = _left_pad(missing)
            with torch.no_grad(), _only(self.model, slice(0, self.split), norm=False):
                hidden = self.model.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
                ).last_hidden_state  # [B, T, D]
            for row, seq in zip(hidden, missing, strict=True):
                fresh[seq] = row[row.shape[0] - len(seq) :].clone()
                if self._cached + fresh[seq].nbytes <= self.cache_bytes:
                    self._cache[seq] = fresh[seq]
                    self._cached += fresh[seq].nbytes
        return [self._cache[s] if s in self._cache else fresh[s] for s in sequences]


def first_trainable_layer(names: Sequence[str], layers: int) -> int:
    """The lowest decoder layer a trainable tensor lives in; 0 when one lives below the layers."""
    lowest = layers
    for name in names:
        found = re.match(r"model\.layers\.(\d+)\.", name)
        if found:
            lowest = min(lowest, int(found.group(1)))
        elif not name.startswith(("model.norm.", "lm_head.")):
            return 0
    return lowest


def _layered(model: Any) -> bool:
    body = getattr(model, "model", None)
    return all(hasattr(body, part) for part in ("embed_tokens", "layers", "norm"))


@contextmanager
def _only(model: Any, layers: slice, norm: bool) -> Iterator[None]:
    """Run `model` with a slice of its decoder layers (and without its final norm when `norm` is False)."""
    if layers == slice(0, None) and norm:
        yield
        return
    body = model.model
    saved = body.layers, body.norm
    body.layers = nn.ModuleList(list(saved[0])[layers])
    if not norm:
        body.norm = nn.Identity()
    try:
        yield
    finally:
        body.layers, body.norm = saved


def _left_pad(sequences: Sequence[Tokens]) -> tuple[Tensor, Tensor, Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), length, dtype=torch.long)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, length - len(seq) :] = torch.tensor(seq)
        mask[i, length - len(seq) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _pad_left(hidden: list[Tensor], length: int) -> Tensor:
    out = hidden[0].new_zeros(len(hidden), length, hidden[0].shape[-1])  # [B, T, D]
    for i, h in enumerate(hidden):
        out[i, length - h.shape[0] :] = h
    return out


class TrainableModel:
    """A causal LM whose named tensors alone get gradients; a subclass says what loss a batch gives."""

    def __init__(self, model: Any, tokenizer: Tokenizer, trainable: Sequence[str]):
        self.model, self.tokenizer = model, tokenizer
        params = dict(model.named_parameters())
        missing = sorted(set(trainable) - set(params))
        if missing:
            raise InvalidInput(f"trainable tensors {missing[:5]} are not parameters of the model")
        self.params = {name: params[name] for name in trainable}
        for p in self.params.values():
            p.requires_grad_(True)
        layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
        self.scorer = Scorer(model, first_trainable_layer(list(trainable), layers))

    def values(self) -> dict[str, Tensor]:
        """The trainable tensors' current values (live views: clone before changing them)."""
        return {name: p.detach() for name, p in self.params.items()}

    def set_values(self, values: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for name, value in values.items():
                self.params[name].copy_(value)

    def loss_and_grads(self, batch: Sequence[Example]) -> tuple[float, dict[str, Tensor]]:
        for p in self.params.values():
            p.grad = None
        loss = self._loss(batch)
        loss.backward()
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in self.params.items()}
        for p in self.params.values():
            p.grad = None
        return float(loss.detach()), grads

    def loss(self, batch: Sequence[Example]) -> float:
        with torch.no_grad():
            return float(self._loss(batch))

    def _loss(self, batch: Sequence[Example]) -> Tensor:
        raise NotImplementedError
