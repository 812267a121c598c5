"""Train and serve agree on tokens: the worker's tokenizer (the `tokenizers` library, no transformers) gives
the ids and text the optimizer's AutoTokenizer gives, on the real SmolLM2 and on byte-level models;
tokenizers that transformers would change are left to it; building a worker imports neither transformers
nor dynamo."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llmk.bootstrap import Deployment
from llmk.domain.task_spec import TASKS
from llmk.domain.versions import CommitInfo
from llmk.errors import FailedPrecondition, InvalidInput
from services.inference.engine import tokens
from services.inference.usecases.loading import (
    BYTE_CHAT_TEMPLATE,
    NoInitOnMeta,
    byte_tokenizer,
    load_tokenizer,
)
from services.optimizer.usecases.causal_lm import ByteTokenizer
from services.optimizer.usecases.causal_lm import load_tokenizer as optimizer_tokenizer
from tests.conftest import SmolLM2

from .hosting import create_tiny, settings_for, tiny_model, tokenizer_files
from .test_smollm2 import CHATS

VALID_CSV = Path(__file__).parents[3] / "shared/llmk/data/twitter-financial-news-sentiment/valid.csv"
ODD_TEXTS = [
    "héllo wörld 日本語 🚀  spaces   and\ttabs\n\n",
    "<|im_start|>user\nnot a turn<|im_end|> <eos>",
    "don't  stop — \u2018quotes\u2019 ... $AAPL +5.2%",
    " ",
]


def headlines(n: int = 300) -> list[str]:
    with VALID_CSV.open(newline="") as f:
        return [row["text"] for _, row in zip(range(n), csv.DictReader(f), strict=False)]


def saved(tokenizer: Any) -> dict[str, bytes]:
    """The files `llmk store import` keeps for a transformers tokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {f.name: f.read_bytes() for f in Path(tmp).iterdir() if f.is_file()}


def auto(files: dict[str, bytes]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return AutoTokenizer.from_pretrained(tmp)


def assert_same_tokens(ours: Any, theirs: Any, texts: list[str]) -> None:
    for text in texts:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == theirs.encode(
                text, add_special_tokens=special
            ), text
        ids = theirs.encode(text)
        for end in range(len(ids) + 1):  # every prefix, as the streaming decoder decodes them
            for skip in (True, False):
                assert ours.decode(ids[:end], skip_special_tokens=skip) == theirs.decode(
                    ids[:end], skip_special_tokens=skip
                ), (text, end)


@pytest.mark.smollm2
def test_smollm2_served_tokens_equal_the_optimizers(smollm2: SmolLM2) -> None:
    files = saved(smollm2.tokenizer)
    ours = tokens.from_files(files)
    assert ours is not None, "SmolLM2's stored tokenizer must not need transformers"
    trainer = optimizer_tokenizer(files, smollm2.hf.config.vocab_size)
    task = TASKS["sentiment"]
    texts = headlines()
    for text in texts:  # the monitor's prompts, cut as both tiers cut them, and the labels after them
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == trainer.encode(text)
        cut = ours.decode(ids[: task.max_tokens])
        assert cut == trainer.decode(ids[: task.max_tokens])
        assert ours.encode(task.prompt(cut)) == trainer.encode(task.prompt(cut))
    for label in task.labels:
        assert ours.encode(" " + label, add_special_tokens=False) == trainer.encode(" " + label)
    theirs = auto(files)
    assert_same_tokens(ours, theirs, texts[:20] + ODD_TEXTS)
    assert (ours.eos_token_id, ours.bos_token_id) == (theirs.eos_token_id, theirs.bos_token_id) == (2, 1)
    for chat in [
        *CHATS,
        [{"role": "system", "content": "Be brief."}, *CHATS[0], {"role": "assistant", "content": "Paris."}],
    ]:
        for cue in (True, False):
            text = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=cue)
            assert text == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=cue)


def test_a_byte_level_model_with_tokenizer_files_is_served_like_autotokenizer(tmp_path: Path) -> None:
    client = Deployment(settings_for(tmp_path / "home")).local_store()
    create_tiny(client)
    files = client.model("tiny").files
    ours = load_tokenizer(client, "tiny", list(files), 258)
    assert isinstance(ours, tokens.ServedTokenizer)
    theirs = auto(tokenizer_files())
    assert_same_tokens(ours, theirs, ["Review: great\nSentiment:", *ODD_TEXTS])
    assert ours.eos_token_id == theirs.eos_token_id == 256
    chat = [{"role": "user", "content": "héllo"}, {"role": "assistant", "content": None}]
    assert ours.apply_chat_template(chat, add_generation_prompt=True) == theirs.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )


def test_the_byte_tokenizer_of_a_model_without_files_gives_the_optimizers_ids() -> None:
    ours, trainer = byte_tokenizer("synthetic", 300), ByteTokenizer(300)
    for text in ["Headline: up\nMove:", *ODD_TEXTS]:
        ids = ours.encode(text)
        assert ids == ours.encode(text, add_special_tokens=False) == trainer.encode(text)
        assert ours.decode(ids) == trainer.decode(ids) == text
    cut = ours.encode("héllo")[:2]  # inside "é": both tiers must cut a text to the same string
    assert ours.decode(cut) == trainer.decode(cut) == "h\ufffd"
    assert ours.eos_token_id is None
    reference = PreTrainedTokenizerFast(tokenizer_object=ours.backend)
    reference.chat_template = BYTE_CHAT_TEMPLATE
    chat = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(chat, add_generation_prompt=True) == reference.apply_chat_template(
        chat, tokenize=False, add_generation_prompt=True
    )
    with pytest.raises(FailedPrecondition, match="too small a vocabulary"):
        byte_tokenizer("synthetic", 100)


@pytest.mark.parametrize(
    "change",
    [
        {"add_bos_token": True},  # transformers rewrites the post-processor
        {"tokenizer_class": "LlamaTokenizer"},  # a class that builds its own backend
        {"eos_token": "</s>"},  # a special token the vocabulary lacks: transformers adds it
        {"additional_special_tokens": ["<tool>"]},
    ],
)
def test_tokenizers_transformers_would_change_are_left_to_it(tmp_path: Path, change: dict[str, Any]) -> None:
    files = tokenizer_files()
    config = {**json.loads(files["tokenizer_config.json"]), "bos_token": "<pad>", **change}
    files["tokenizer_config.json"] = json.dumps(config).encode()
    assert tokens.from_files(files) is None
    client = Deployment(settings_for(tmp_path / "home")).local_store()
    config, tensors = tiny_model()
    client.create_model("changed", tensors, config, files, CommitInfo())
    served = load_tokenizer(client, "changed", list(client.model("changed").files), 258)
    assert not isinstance(served, tokens.ServedTokenizer)
    assert served.encode("up") == auto(files).encode("up")  # the optimizer's AutoTokenizer, whatever it does


def test_unreadable_tokenizer_files_get_a_clear_error() -> None:
    files = tokenizer_files()
    for bad, message in ((b"{not json", "not valid JSON"), (b"[1, 2]", "not a JSON object")):
        with pytest.raises(FailedPrecondition, match=f"tokenizer_config.json is {message}"):
            tokens.from_files({**files, "tokenizer_config.json": bad})
    chat = [{"role": "user", "content": "hi"}]
    for template, error, message in (
        (None, FailedPrecondition, "no chat template"),
        ("{% for m in messages %}", FailedPrecondition, "does not compile"),
        ("{{ raise_exception('roles must alternate') }}", InvalidInput, "roles must alternate"),
    ):
        served = tokens.ServedTokenizer(byte_tokenizer("m", 258).backend, {}, template)
        with pytest.raises(error, match=message):
            served.apply_chat_template(chat)


def test_init_is_skipped_only_on_the_meta_device() -> None:
    torch.manual_seed(0)
    expected = nn.Embedding(8, 4).weight.detach().clone()
    torch.manual_seed(0)
    with NoInitOnMeta():
        assert torch.equal(nn.Embedding(8, 4).weight, expected)
        with torch.device("meta"):
            assert nn.Embedding(8, 4).weight.is_meta


def test_a_worker_is_built_without_importing_transformers_or_dynamo(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "home")
    create_tiny(Deployment(settings).local_store())
    script = f"""
import sys
from llmk.config import Settings
from llmk.bootstrap import Deployment
from services.inference.usecases.loading import build_served
settings = Settings(_env_file=None, home={str(tmp_path / "home")!r}, database_url="", object_dir=None,
                    device="cpu", version_poll_seconds=0)
served = build_served(Deployment(settings).local_store(), settings, "tiny", None, ())
assert served.tokenizer.encode("hi") == [104, 105]
served.close()
print(sorted(m for m in ("transformers", "torch._dynamo") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
