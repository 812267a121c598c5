"""The gateway through the official `openai` client, unchanged: models, chat and text completions, streamed
or whole, with the version that answered named in every answer."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.support.conftest import MODEL, Api

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello, my order is late"}]


@pytest.fixture
def client(api: Api) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.base_url, api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]


def test_chat_answers_with_usage_and_its_version(client: openai.OpenAI, api: Api) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=0
    )
    answer = raw.parse()
    assert raw.headers["llmk-version"] == str(api.version)
    assert answer.system_fingerprint == f"{MODEL}@{api.version}"
    assert answer.choices[0].message.role == "assistant"
    assert len(answer.choices[0].message.content or "") == 6  # the tiny model writes one letter per token
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 6


def test_a_stream_is_the_same_answer_in_pieces_with_usage_last(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not at once
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert {c.system_fingerprint for c in chunks} == {whole.system_fingerprint}


def test_text_completions_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt="Dear customer,", max_tokens=5, temperature=0)
    streamed = client.completions.create(
        model=MODEL, prompt="Dear customer,", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert len(whole.choices[0].text) == 5
    assert whole.usage is not None


def test_a_seed_repeats_a_sampled_answer(client: openai.OpenAI) -> None:
    def sampled(seed: int) -> str:
        answer = client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=10, temperature=1.0, seed=seed
        )
        return answer.choices[0].message.content or ""

    firsts = {seed: sampled(seed) for seed in range(4)}
    assert all(sampled(seed) == text for seed, text in firsts.items())
    assert len(set(firsts.values())) > 1  # the seed matters


def test_a_narrow_top_p_samples_the_greedy_answer(client: openai.OpenAI) -> None:
    greedy = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
    narrow = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=6, temperature=1.0, top_p=1e-6, seed=3
    )
    assert narrow.choices[0].message.content == greedy.choices[0].message.content


def test_a_stop_string_ends_the_answer_before_it(client: openai.OpenAI) -> None:
    greedy = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    text = greedy.choices[0].message.content or ""
    stop = text[2:4]
    stopped = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=8, temperature=0, stop=["zzzzz", stop]
    )
    assert greedy.choices[0].finish_reason == "length"
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.find(stop)]


def test_a_pinned_version_answers_or_is_not_found(client: openai.OpenAI, api: Api) -> None:
    pinned = client.chat.completions.create(model=f"{MODEL}@{api.version}", messages=HELLO, max_tokens=2)
    assert pinned.system_fingerprint == f"{MODEL}@{api.version}"
    with pytest.raises(openai.NotFoundError, match="has no version"):
        client.chat.completions.create(model=f"{MODEL}@{api.version + 50}", messages=HELLO, max_tokens=2)
    side = _commit_on_a_side_branch(api)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model=f"{MODEL}@{side}", messages=HELLO, max_tokens=2)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)


def _commit_on_a_side_branch(api: Api) -> int:
    from llmk.bootstrap import Deployment

    store = Deployment(api.settings).local_store()
    try:
        store.branch(MODEL, "side")
        tensors = store.fetch(MODEL, "side")
        tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2
        return store.commit_full(MODEL, tensors, branch="side").id
    finally:
        store.catalog.engine.dispose()
