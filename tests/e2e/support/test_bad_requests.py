"""Every bad request gets OpenAI's error JSON with its status and a message naming the problem, and the
server keeps serving: bad fields, a missing or wrong token, a body too big, a full queue, a model loading,
and a client that goes away in the middle of a stream (its sequence is cancelled, its slot freed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.support.conftest import MODEL, Api, in_process

CHAT = "/chat/completions"
HELLO = [{"role": "user", "content": "Where is my parcel?"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 4, **fields}


BAD = [
    ("wrong type of messages", chat(messages="hi"), "messages"),
    ("no messages", chat(messages=[]), "messages"),
    ("empty message", chat(messages=[{"role": "user", "content": "  "}]), "content is empty"),
    ("unknown role", chat(messages=[{"role": "robot", "content": "hi"}]), "role"),
    ("content not text", chat(messages=[{"role": "user", "content": 5}]), "content"),
    ("max_tokens below 1", chat(max_tokens=0), "max_tokens must be between 1 and 64"),
    ("max_tokens over the limit", chat(max_tokens=65), "max_tokens must be between 1 and 64"),
    ("max_tokens not a number", chat(max_tokens="4"), "max_tokens"),
    ("temperature too hot", chat(temperature=2.5), "temperature"),
    ("temperature as text", chat(temperature="warm"), "temperature"),
    ("top_p zero", chat(top_p=0), "top_p"),
    ("too many stops", chat(stop=["a", "b", "c", "d", "e"]), "at most 4 stop strings"),
    ("an empty stop", chat(stop=[""]), "stop string is empty"),
    ("several choices", chat(n=2), "only n=1"),
    ("no model", {"messages": HELLO}, "model"),
    ("prompt over the context", chat(messages=[{"role": "user", "content": "x" * 400}]), "limit is"),
    ("completion without prompt", {"model": MODEL}, "prompt"),
]


@pytest.mark.parametrize(("case", "body", "says"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_field_is_a_400_naming_it(api: Api, case: str, body: dict[str, Any], says: str) -> None:
    path = "/completions" if case.startswith("completion") else CHAT
    answer = httpx.post(api.base_url + path, json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert says in error["message"] + str(error["param"])
    assert error["type"] == "invalid_request_error"
    assert httpx.post(api.base_url + CHAT, json=chat()).status_code == 200  # still serving


@pytest.mark.parametrize("raw", [b"{not json", b'{"model": "tiny", "messages": [}', b""])
def test_malformed_json_is_a_400(api: Api, raw: bytes) -> None:
    answer = httpx.post(api.base_url + CHAT, content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert "JSON" in answer.json()["error"]["message"] or "body" in answer.json()["error"]["message"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinite_temperatures_are_refused(api: Api, number: str) -> None:
    raw = f'{{"model": "tiny", "messages": [{{"role": "user", "content": "hi"}}], "temperature": {number}}}'
    answer = httpx.post(api.base_url + CHAT, content=raw, headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "temperature"


def test_unknown_paths_answer_in_the_same_shape(api: Api) -> None:
    answer = httpx.get(api.url + "/v1/engines")
    assert answer.status_code == 404
    assert "message" in answer.json()["error"]


def test_a_token_is_required_when_one_is_set(server: Callable[..., Api]) -> None:
    api = server(auth_token="s3cret")
    for key in ("wrong", ""):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        answer = httpx.post(api.base_url + CHAT, json=chat(), headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api.base_url, api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=api.base_url, api_key="s3cret", max_retries=0)
    assert good.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2).choices  # type: ignore[arg-type]


def test_a_body_over_the_limit_is_a_413(server: Callable[..., Api]) -> None:
    api = server(max_message_bytes=2000)
    big = chat(messages=[{"role": "user", "content": "y" * 3000}])
    answer = httpx.post(api.base_url + CHAT, json=big)
    assert answer.status_code == 413
    assert "over 2000 bytes" in answer.json()["error"]["message"]
    assert httpx.post(api.base_url + CHAT, json=chat()).status_code == 200


def test_a_full_queue_is_a_429(server: Callable[..., Api]) -> None:
    api = server(max_queue=0)  # no request may wait: the queue is always full
    answer = httpx.post(api.base_url + CHAT, json=chat())
    assert answer.status_code == 429
    assert answer.json()["error"]["type"] == "rate_limit_error"
    client = openai.OpenAI(base_url=api.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)  # type: ignore[arg-type]


def test_while_the_model_loads_requests_get_503(server: Callable[..., Api], tmp_path: Any) -> None:
    release = threading.Event()
    holder: list[Api] = []

    def slow() -> Any:
        release.wait(60)
        return in_process(holder[0].settings)()

    api = server(connect=slow, wait=False)
    holder.append(api)
    assert httpx.get(api.url + "/health").status_code == 503
    loading = httpx.post(api.base_url + CHAT, json=chat())
    assert loading.status_code == 503
    assert "loading" in loading.json()["error"]["message"]
    release.set()
    assert api.support.wait_ready(60).ready
    assert httpx.get(api.url + "/health").json() == {"status": "ok", "model": MODEL, "version": api.version}
    assert httpx.post(api.base_url + CHAT, json=chat()).status_code == 200


def test_a_client_leaving_mid_stream_cancels_its_sequence(server: Callable[..., Api]) -> None:
    api = server(max_new_tokens=2000, max_context_tokens=2048, max_sequences=1)
    long = chat(max_tokens=2000, stream=True)
    with httpx.stream("POST", api.base_url + CHAT, json=long) as answer:
        lines = answer.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
    host = api.support._client.host  # type: ignore[union-attr]  # the in-process worker's own counts
    deadline = time.monotonic() + 10
    while host._active_count():
        assert time.monotonic() < deadline, "the sequence kept running after its client left"
        time.sleep(0.02)
    samples = [s for m in host.metrics.requests.collect() for s in m.samples if s.name.endswith("_total")]
    outcomes = {s.labels["outcome"]: s.value for s in samples}
    assert outcomes.get("cancelled") == 1
    assert not outcomes.get("ok")
    metrics = httpx.get(api.url + "/metrics").text
    assert "llmk_api_cancelled_total 1.0" in metrics
    assert "llmk_api_active_streams 0.0" in metrics
    short = httpx.post(api.base_url + CHAT, json=chat(), timeout=10)  # the only slot is free again
    assert short.status_code == 200
