"""Fuzz target for the model-folder importer: any config.json and tokenizer files (bytes, JSON nested deep,
a folder in a file's place) give an import or one InvalidInput naming the file; never another exception.
`make test` runs it briefly; `make fuzz` runs it long (LLMK_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from llmk.errors import InvalidInput
from services.store.adapters.importers import load_source

FUZZ = settings(
    max_examples=int(os.environ.get("LLMK_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
JSONISH = st.one_of(
    st.binary(max_size=64),
    st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([b"{}", b"[]", b'{"model_type": "llama"}', b"\xef\xbb\xbf{}", b'{"x": NaN}', b"\xff{"]),
)
FILE = st.one_of(JSONISH, st.none())  # None: a folder in the file's place


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def place(path: Path, content: bytes | None) -> None:
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)


@FUZZ
@given(config=FILE, tokenizer=FILE)
@example(config=b"\xff\xfe", tokenizer=None)
def test_a_model_folder(scratch: Path, config: bytes | None, tokenizer: bytes | None) -> None:
    folder = scratch / "model"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    save_file({"w": torch.ones(2)}, str(folder / "model.safetensors"))
    place(folder / "config.json", config)
    place(folder / "tokenizer.json", tokenizer)
    try:
        imported = load_source(str(folder))
    except InvalidInput as e:
        error = str(e)
    else:
        assert isinstance(imported.config, dict)
        error = ""
    assert not error or str(folder) in error
