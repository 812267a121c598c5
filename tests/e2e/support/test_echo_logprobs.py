"""`/v1/completions` with echo and logprobs: the answer starts with the prompt and scores each of its tokens
under the version that answered (how a text's likelihood is read through the API, with the openai client)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest

from tests.e2e.support.conftest import MODEL, Api


@pytest.fixture
def client(api: Api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.base_url, api_key="unused", max_retries=0)


def score(client: openai.OpenAI, text: str) -> list[float | None]:
    answer = client.completions.create(
        model=MODEL, prompt=text, echo=True, logprobs=0, max_tokens=1, temperature=0
    )
    choice = answer.choices[0]
    assert choice.text.startswith(text)
    assert choice.logprobs is not None
    assert "".join(choice.logprobs.tokens or []) == text  # the tiny model reads a byte a token
    assert choice.logprobs.text_offset == list(range(len(text)))
    assert answer.system_fingerprint == f"{MODEL}@{answer.system_fingerprint.rsplit('@')[-1]}"
    return list(choice.logprobs.token_logprobs or [])


def test_prompt_tokens_are_scored_as_the_model_predicts_them(client: openai.OpenAI) -> None:
    greedy = client.completions.create(model=MODEL, prompt="order", max_tokens=1, temperature=0)
    chosen = greedy.choices[0].text  # the model's most likely next token after "order"
    other = "a" if chosen != "a" else "b"
    likely, unlikely = score(client, "order" + chosen), score(client, "order" + other)
    assert likely[0] is None  # the first token has nothing before it
    assert all(lp is not None and math.isfinite(lp) and lp <= 0 for lp in likely[1:])
    assert likely[:-1] == pytest.approx(unlikely[:-1])  # the same prompt scores the same
    assert likely[-1] is not None
    assert unlikely[-1] is not None
    assert likely[-1] > unlikely[-1]


def test_echo_alone_prepends_the_prompt(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=MODEL, prompt="order ", echo=True, max_tokens=3, temperature=0)
    assert answer.choices[0].text.startswith("order ")
    assert len(answer.choices[0].text) == len("order ") + 3
    assert answer.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"logprobs": 1}, "echo: true scores the prompt"),
        ({"echo": True, "stream": True}, "without stream"),
        ({"echo": True, "logprobs": 6}, "logprobs"),
    ],
)
def test_what_is_not_served_is_refused(api: Api, extra: dict[str, object], says: str) -> None:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 2, **extra}
    refused = httpx.post(api.base_url + "/completions", json=body)
    assert refused.status_code == 400
    assert says in refused.json()["error"]["message"]
