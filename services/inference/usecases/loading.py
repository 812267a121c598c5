"""Building a served model from the store alone: its config.json, its tokenizer files, its tensors.

The weights go to the compute device (CUDA in bf16 when present, else CPU in fp32; LLMK_DEVICE overrides),
then load-time options and the memory budget are applied; the engines that run the model (the generator
and the classify batcher) are created around it, both stamped with the version they serve.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from llmk.config import Settings
from llmk.domain.names import check_file_name
from llmk.domain.versions import MAIN
from llmk.errors import FailedPrecondition
from services.inference.engine import compute, tokens
from services.inference.engine.batcher import ClassifyBatcher
from services.inference.engine.generator import Generator
from services.inference.engine.model import Model, build_model
from services.inference.engine.tokens import ServedTokenizer
from services.store.interface import StoreClient

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
BYTE_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"  # a line per turn, then the cue
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass
class Served:
    """One loaded version and the engines running it; the version lives in both engines, changed together."""

    name: str
    branch: str  # the branch followed for hot updates; empty when loaded from a tag or a version id
    options: tuple[str, ...]
    model: Model
    tokenizer: Any
    generator: Generator
    batcher: ClassifyBatcher
    device: torch.device
    broken: str = ""  # set when an undo failed: the weights are not one version, so nothing is served

    @property
    def version(self) -> int:
        return self.generator.version

    def stamp(self, version: int) -> None:
        self.generator.version = self.batcher.version = version

    def close(self) -> None:
        self.generator.close()
        self.batcher.close()


def build_served(
    store: StoreClient,
    settings: Settings,
    name: str,
    ref: str | None,
    options: tuple[str, ...],
    on_batch: Callable[[int], None] | None = None,
) -> Served:
    """`name` at `ref` (default: the main branch), ready to answer; a branch is followed, a tag or id not."""
    s = settings
    v = store.version(name, ref)  # one version id for everything read below, whatever moves meanwhile
    branches = {r.name for r in store.refs(name) if r.kind == "branch"}
    branch = (ref or MAIN) if (ref or MAIN) in branches else ""
    stored = store.model(name)
    config = json.loads(store.file(name, "config.json")) if "config.json" in stored.files else stored.config
    tokenizer = load_tokenizer(store, name, list(stored.files), int(config.get("vocab_size", 0)))
    device, dtype = pick_device(s.device)
    model = compute.run(_build, store, name, v.id, config, options, s.weight_budget, device, dtype)
    version = v.id
    generator = Generator(
        model,
        tokenizer,
        max_active=s.max_sequences,
        max_waiting=s.max_queue,
        max_seq_len=s.max_context_tokens,
        eos_token_ids=eos_ids(config, tokenizer),
        version=version,
    )
    batcher = ClassifyBatcher(
        model,
        tokenizer,
        max_batch_size=s.max_batch_size,
        max_wait_ms=s.max_wait_ms,
        max_queue=s.max_queue,
        version=version,
        on_batch=on_batch,
    )
    return Served(name, branch, options, model, tokenizer, generator, batcher, device)


def _build(
    store: StoreClient,
    name: str,
    version: int,
    config: dict[str, Any],
    options: tuple[str, ...],
    budget: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Model:
    """Read and build on the compute thread, where the model's every later computation runs."""
    tensors = store.fetch(name, str(version))
    with NoInitOnMeta():
        model = build_model(config, tensors, "cpu" if budget else device, dtype)
    del tensors
    prepare_weights(model, options, budget, device)
    return model


class NoInitOnMeta(TorchFunctionMode):
    """Skips torch.nn.init's random fills of meta tensors, which hold no data to fill: the first one on the
    meta device (nn.Embedding's normal_) imports torch._dynamo, 1-2 s of a worker's cold start. A torch
    function mode is this thread's alone: a model built meanwhile on another thread is initialised."""

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # init functions take the tensor first
        if (
            getattr(func, "__module__", "") == "torch.nn.init"
            and isinstance(target, torch.Tensor)
            and target.is_meta
        ):
            return target
        return func(*args, **kwargs)


def load_tokenizer(store: StoreClient, name: str, files: list[str], vocab_size: int) -> Any:
    """The model's tokenizer from its stored files, over the `tokenizers` library when transformers would only
    wrap tokenizer.json (no transformers import: a third of a worker's cold start), else AutoTokenizer;
    byte-level without tokenizer files."""
    if not any(f in files for f in TOKENIZER_FILES):
        return byte_tokenizer(name, vocab_size)
    for f in files:
        check_file_name(f)  # a stored name never escapes the folder, whatever the store let in
    stored = {f: store.file(name, f) for f in files}
    return tokens.from_files(stored) or auto_tokenizer(stored)


def auto_tokenizer(files: dict[str, bytes]) -> Any:
    """AutoTokenizer over the stored files, written to a temporary folder."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="llmk-tokenizer-") as tmp:
        for f, data in files.items():
            (Path(tmp) / f).write_bytes(data)
        return AutoTokenizer.from_pretrained(tmp)


def byte_tokenizer(name: str, vocab_size: int) -> ServedTokenizer:
    """One token per UTF-8 byte, id = byte value: how the optimizer reads models stored without tokenizer
    files (synthetic ones), so both tiers see the same tokens."""
    if vocab_size < 256:
        raise FailedPrecondition(
            f"model {name!r} has no tokenizer files and too small a vocabulary for bytes"
        )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={symbol: b for b, symbol in _byte_symbols().items()}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return ServedTokenizer(tok, {}, BYTE_CHAT_TEMPLATE)


def _byte_symbols() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, which the byte-level pre-tokenizer produces."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {b: chr(b) for b in printable}
    symbols.update({b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)})
    return symbols


def eos_ids(config: dict[str, Any], tokenizer: Any) -> list[int]:
    value = config.get("eos_token_id")
    ids = value if isinstance(value, list) else [value]
    return sorted({i for i in [*ids, tokenizer.eos_token_id] if isinstance(i, int)})


def pick_device(setting: str) -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 when present (or asked for), else CPU in fp32."""
    device = torch.device(setting or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FailedPrecondition(f"LLMK_DEVICE={setting} but this machine has no CUDA device")
    return device, torch.bfloat16 if device.type == "cuda" else torch.float32


def prepare_weights(model: Model, options: tuple[str, ...], budget: int, device: torch.device) -> None:
    """Load-time options, then the memory budget; each imported only when asked for."""
    if options:
        from services.inference.engine import compress

        compress.apply_options(model, list(options))
    if budget:
        from services.inference.engine import offload

        offload.fit_budget(model, budget, device)


def weight_bytes(model: Model) -> tuple[int, int]:
    """(weight bytes on the compute device, weight bytes in all)."""
    try:
        from services.inference.engine import offload
    except ImportError:
        tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
        total = sum(t.numel() * t.element_size() for t in tensors)
        return total, total
    return int(offload.resident_bytes(model)), int(offload.total_bytes(model))
