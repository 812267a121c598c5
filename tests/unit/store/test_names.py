"""Tensor selectors: a dotted prefix stops at a dot boundary; a glob matches the whole name."""

from __future__ import annotations

import pytest

from llmk.domain.names import any_match, matches, select

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
    assert matches("a.b", "a") and not matches("ab", "a")
