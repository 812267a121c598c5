"""Names, limits and metadata are checked where they enter, by one rule on SQLite and PostgreSQL, in
process and over gRPC: a bad one is InvalidInput with a plain message, never a database error with its SQL."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from llmk.domain.versions import CommitInfo
from llmk.errors import InvalidInput, LlmkError, NotFound
from services.store.rpc.servicer import _json
from tests.contract.store.contract_support import NORM


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def commit_with(metadata: dict[str, Any]) -> Callable[[Any], Any]:
    return lambda e: e.client.commit_full(
        e.model, {NORM: torch.full((64,), 2.0)}, info=CommitInfo(metadata=metadata)
    )


INVALID: dict[str, Callable[[Any], Any]] = {
    "model name with NUL": lambda e: e.client.model("ti\x00ny"),
    "fetch of a model name with NUL": lambda e: e.client.fetch("ti\x00ny"),
    "ref with NUL": lambda e: e.client.version(e.model, "ma\x00in"),
    "log from a ref with NUL": lambda e: e.client.log(e.model, "ma\x00in"),
    "negative log limit": lambda e: e.client.log(e.model, limit=-5),
    "NaN in metadata": commit_with({"x": math.nan}),
    "Inf in metadata": commit_with({"x": float("1e999")}),
    "metadata nested 500 deep": commit_with(nested(500)),
    "an empty freeze pattern": lambda e: e.client.freeze(e.model, [""]),
}


@pytest.mark.parametrize("label", list(INVALID))
def test_bad_input_is_invalid_with_a_plain_message(env: Any, label: str) -> None:
    before = env.history()
    with pytest.raises(InvalidInput) as refused:
        INVALID[label](env)
    message = str(refused.value)
    assert "SQL" not in message
    assert "SELECT" not in message
    assert len(message.splitlines()) == 1
    assert env.history() == before
    assert env.inspect.model(env.model).frozen == []


def test_a_rollback_of_a_tag_says_tags_do_not_move(env: Any) -> None:
    env.client.tag(env.model, "t1", str(env.first))
    with pytest.raises(LlmkError, match="'t1' is a tag"):
        env.client.rollback(env.model, str(env.first), branch="t1")


def test_a_long_ref_is_not_found_or_invalid_never_a_database_error(env: Any) -> None:
    with pytest.raises((NotFound, InvalidInput)):
        env.client.version(env.model, "x" * 5000)


@pytest.mark.parametrize("text", ["[" * 200_000, '{"x": ' * 100_000, "\x00"])
def test_metadata_json_that_cannot_be_read_is_invalid(text: str) -> None:
    with pytest.raises(InvalidInput, match="metadata_json"):
        _json(text, "metadata_json")
