"""Each completion is stored with what was asked, the reply and its version; POST /v1/feedback takes one
thumb (and an optional better reply) per completion and refuses everything else with a clear error."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.support.conftest import MODEL, Api

ASK: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a helpful agent."},
    {"role": "user", "content": "I want to cancel my order"},
]


@pytest.fixture
def client(api: Api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.base_url, api_key="unused", max_retries=0)


def feedback(api: Api, **body: object) -> httpx.Response:
    return httpx.post(api.base_url + "/feedback", json=body)


def test_a_completion_is_stored_with_its_messages_reply_and_version(client: openai.OpenAI, api: Api) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, temperature=0)
    stored = api.support.conversation(answer.id).completion
    assert [(t.role, t.content) for t in stored.messages] == [(m["role"], m["content"]) for m in ASK]
    assert stored.reply == answer.choices[0].message.content
    assert stored.version == api.version
    assert stored.latency_ms > 0


def test_a_streamed_completion_is_stored_too(client: openai.OpenAI, api: Api) -> None:
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=5, stream=True, seed=1)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert api.support.conversation(chunks[0].id).completion.reply == text


def test_a_thumb_and_a_correction_are_stored_once(client: openai.OpenAI, api: Api) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3)
    taken = feedback(api, id=answer.id, rating="down", correction="I have cancelled it for you.")
    assert taken.status_code == 200
    assert taken.json() == {"id": answer.id, "object": "feedback", "rating": "down", "stored": True}
    given = api.support.conversation(answer.id).feedback
    assert given is not None
    assert (given.rating, given.correction) == ("down", "I have cancelled it for you.")
    again = feedback(api, id=answer.id, rating="up")
    assert again.status_code == 409
    assert "already has feedback" in again.json()["error"]["message"]
    assert api.support.conversation(answer.id).feedback == given


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"id": "chatcmpl-unknown", "rating": "up"}, 404, "no completion with id"),
        ({"rating": "up"}, 400, "id"),
        ({"id": "", "rating": "up"}, 400, "id"),
        ({"id": "x", "rating": "meh"}, 400, "rating"),
        ({"id": "x", "rating": 1}, 400, "rating"),
        ({"id": "x", "rating": "up", "correction": 5}, 400, "correction"),
    ],
)
def test_bad_feedback_is_refused(api: Api, body: dict[str, object], status: int, says: str) -> None:
    answer = feedback(api, **body)
    assert answer.status_code == status
    error = answer.json()["error"]
    assert says in error["message"] + str(error["param"])


def test_a_blank_correction_is_refused_and_nothing_stored(client: openai.OpenAI, api: Api) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    refused = feedback(api, id=answer.id, rating="down", correction="   ")
    assert refused.status_code == 400
    assert api.support.conversation(answer.id).feedback is None
    assert feedback(api, id=answer.id, rating="up").status_code == 200
