"""Importing a model folder reads only regular files inside it, each within a size limit: a symlink to
/etc/passwd would be stored and served to every reader, and one to /dev/zero would be read until memory ran
out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmk.config import Settings
from llmk.errors import InvalidInput
from services.store.adapters.importers import load_source


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": torch.ones(2)}, str(model / "model.safetensors"))
    (model / "config.json").write_text('{"model_type": "llama"}')
    return model


def test_a_symlink_leaving_the_folder_is_refused(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("root:x:0:0")
    (folder / "tokenizer.json").symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidInput, match=r"tokenizer\.json.*outside the model folder"):
        load_source(str(folder))


def test_a_symlink_to_a_device_is_refused_without_reading_it(folder: Path) -> None:
    (folder / "merges.txt").symlink_to("/dev/zero")
    with pytest.raises(InvalidInput, match=r"merges\.txt"):
        load_source(str(folder))


def test_a_shard_leaving_the_folder_is_refused(folder: Path, tmp_path: Path) -> None:
    save_file({"v": torch.ones(2)}, str(tmp_path / "elsewhere.safetensors"))
    (folder / "b.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(InvalidInput, match=r"b\.safetensors.*outside the model folder"):
        load_source(str(folder))


def test_files_that_are_not_regular_are_refused(folder: Path) -> None:
    os.mkfifo(folder / "vocab.json")
    with pytest.raises(InvalidInput, match=r"vocab\.json: not a regular file"):
        load_source(str(folder))
    os.unlink(folder / "vocab.json")
    (folder / "tokenizer.json").mkdir()
    with pytest.raises(InvalidInput, match=r"tokenizer\.json: not a regular file"):
        load_source(str(folder))


def test_a_file_over_the_size_setting_is_refused_naming_the_setting(folder: Path) -> None:
    (folder / "tokenizer.json").write_bytes(b"x" * 2000)
    with pytest.raises(InvalidInput, match="LLMK_MAX_IMPORT_FILE_BYTES"):
        load_source(str(folder), max_file_bytes=1000)
    assert Settings(_env_file=None).max_import_file_bytes >= 64 << 20  # type: ignore[call-arg]


def test_a_link_inside_the_folder_is_followed(folder: Path) -> None:
    (folder / "real-tokenizer.json").write_text("{}")
    (folder / "tokenizer.json").symlink_to("real-tokenizer.json")
    assert load_source(str(folder)).files["tokenizer.json"] == b"{}"


@pytest.mark.parametrize("config", [b"not json", b"[1, 2]", b"\xff\xfe", b"[" * 100_000])
def test_a_config_that_is_not_a_json_object_is_refused(folder: Path, config: bytes) -> None:
    (folder / "config.json").write_bytes(config)
    with pytest.raises(InvalidInput, match=r"config\.json"):
        load_source(str(folder))
