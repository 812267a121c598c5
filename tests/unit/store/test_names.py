"""Tensor selectors: a dotted prefix stops at a dot boundary; a glob matches the whole name."""

from __future__ import annotations

import pytest

from llmk.domain.names import any_match, check_file_name, check_name, check_tensor_name, matches, select
from llmk.errors import InvalidInput

NAMES = [f"model.layers.{i}.mlp.up_proj.weight" for i in (1, 2, 10, 11)] + ["model.norm.weight"]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", NAMES),
        ("model.layers.1", [NAMES[0]]),
        ("model.layers.1.", [NAMES[0]]),
        ("model.layers.1*", [NAMES[0], NAMES[2], NAMES[3]]),
        ("model.layers.1?.*", [NAMES[2], NAMES[3]]),
        ("model.layers.[12].*", [NAMES[0], NAMES[1]]),
        ("*.mlp.*", NAMES[:4]),
        ("model.norm.weight", [NAMES[4]]),
        ("model.norm.w", []),
        ("mlp", []),
    ],
)
def test_select(selector: str, expected: list[str]) -> None:
    assert select(NAMES, selector) == expected


def test_frozen_patterns() -> None:
    assert any_match("model.layers.1.mlp.up_proj.weight", ["model.norm", "model.layers.1"])
    assert not any_match("model.layers.10.mlp.up_proj.weight", ["model.layers.1"])
    assert not any_match("model.layers.1.mlp.up_proj.weight", [])
    assert matches("a.b", "a")
    assert not matches("ab", "a")


GOOD = ["tiny", "smollm2-135m", "v1.2_rc", "a" * 200, "x1"]
BAD = ["", "a/b", "../x", ".hidden", "-flag", "with space", "t@1", "42", "é", "a" * 201, "a\n", "x²"]


@pytest.mark.parametrize("name", GOOD)
def test_good_names_pass(name: str) -> None:
    check_name(name)
    check_file_name(name)


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        check_name(name)


@pytest.mark.parametrize(
    "name",
    ["../../x", "/abs/x", "..", ".", "a/b", "a\\b", ".env", "", "x" * 201, "tok\x00.json", "\uff58.json"],
)
def test_a_file_name_never_leaves_its_folder(name: str) -> None:
    with pytest.raises(InvalidInput, match="file name"):
        check_file_name(name)


def test_tensor_names_are_dotted_ascii() -> None:
    for good in ["model.layers.0.mlp.up_proj.weight", "_orig_mod.lm_head.weight", "w", "blk:0"]:
        check_tensor_name(good)
    for bad in ["", "a/b", "a b", ".a", "x" * 401, "poids.é"]:
        with pytest.raises(InvalidInput, match="tensor name"):
            check_tensor_name(bad)
