"""The Host builds a stored model from the store alone and answers like the engine over the same weights;
every bad request is refused with its own error and leaves the worker serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmk.bootstrap import Deployment
from llmk.errors import FailedPrecondition, InvalidInput, NotFound, ResourceExhausted
from services.inference.engine.classifier import classify
from services.inference.engine.generator import Generator, Request
from services.inference.engine.model import build_model
from services.inference.usecases.host import Host
from services.inference.usecases.loading import load_tokenizer
from services.store.usecases.store import Store

from .hosting import LABELS, TEMPLATE, TEXTS, create_tiny, perturbed, settings_for


@dataclass
class Served:
    host: Host
    client: Store


def start(home: Path, **overrides: Any) -> Served:
    settings = settings_for(home, **overrides)
    client = Deployment(settings).local_store()
    if not client.models():
        create_tiny(client)
    return Served(Host(settings, client, Deployment(settings).events()), client)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = start(tmp_path / "home")
    s.host.load("tiny")
    yield s
    s.host.close()


def test_serves_the_stored_model_like_the_engine_over_the_same_weights(served: Served) -> None:
    client = served.client
    info = served.host.info()
    assert (info.model, info.version, info.branch, info.device, info.dtype) == (
        "tiny",
        1,
        "main",
        "cpu",
        "float32",
    )
    assert info.resident_bytes == info.total_bytes > 0

    model = build_model(json.loads(client.file("tiny", "config.json")), client.fetch("tiny", "1"))
    tokenizer = load_tokenizer(client, "tiny", list(client.model("tiny").files), 258)
    answer = served.host.classify(TEXTS, LABELS)
    expected = classify(model, tokenizer, TEXTS, LABELS, TEMPLATE.replace("{text}", "{prompt}"))
    assert answer.version == 1
    for scores, probs, text in zip(answer.results, expected, TEXTS, strict=True):
        assert scores.probabilities == pytest.approx(probs, abs=1e-6)
        assert scores.label == max(probs, key=probs.__getitem__)
        assert scores.prompt_tokens == len(tokenizer.encode(TEMPLATE.format(text=text)))

    result = served.host.generate(Request("The market", max_tokens=20)).result()
    with Generator(model, tokenizer, max_active=1, max_seq_len=128) as alone:
        reference = alone.submit(Request("The market", max_tokens=20)).result()
    assert result.token_ids == reference.token_ids
    assert (result.text, result.version, result.prompt_tokens) == (reference.text, 1, 10)


def test_chat_messages_use_the_stored_chat_template(served: Served) -> None:
    messages = [{"role": "user", "content": "hi"}]
    result = served.host.generate(Request(messages=messages, max_tokens=3)).result()
    assert result.prompt_tokens == len("<user>hi\n<assistant>")


def test_a_tag_or_version_id_is_served_without_following(served: Served) -> None:
    served.client.tag("tiny", "stable", "1")
    assert served.host.load("tiny", "stable").branch == ""
    served.client.commit_full("tiny", perturbed(served.client, "tiny", ["model.norm.weight"], 1))
    served.host.load("tiny", "1")
    assert (served.host.info().version, served.host.info().branch) == (1, "")
    assert served.host.load("tiny", "2").version == 2


def test_unknown_models_and_versions_are_not_found(served: Served) -> None:
    with pytest.raises(NotFound):
        served.host.load("nope")
    with pytest.raises(NotFound):
        served.host.load("tiny", "999")
    with pytest.raises(NotFound):
        served.host.classify(TEXTS, LABELS, model="nope")
    with pytest.raises(NotFound):
        served.host.classify(TEXTS, LABELS, version="999")
    with pytest.raises(NotFound):
        served.host.generate(Request("x"), version="not-a-version")
    assert served.host.info().version == 1  # still serving


def test_a_pinned_version_that_is_not_loaded_is_a_failed_precondition(served: Served) -> None:
    served.host.load("tiny", "1")  # pinned to version 1: no hot update
    served.client.commit_full("tiny", perturbed(served.client, "tiny", ["model.norm.weight"], 1))
    with pytest.raises(FailedPrecondition, match="version 2"):
        served.host.classify(TEXTS, LABELS, version="2")
    with pytest.raises(FailedPrecondition):
        served.host.generate(Request("x"), version="2")
    assert served.host.classify(TEXTS[:1], LABELS, version="1").version == 1
    assert served.host.generate(Request("x", max_tokens=2), version="1").result().version == 1


def test_nothing_loaded_or_another_model_is_a_failed_precondition(served: Served) -> None:
    create_tiny(served.client, "other")
    with pytest.raises(FailedPrecondition, match="serves tiny"):
        served.host.classify(TEXTS, LABELS, model="other")
    served.host.unload()
    assert served.host.info().model == ""
    with pytest.raises(FailedPrecondition, match="no model is loaded"):
        served.host.classify(TEXTS, LABELS)


def test_a_model_stored_without_tokenizer_files_reads_bytes_like_the_optimizer(served: Served) -> None:
    create_tiny(served.client, "bare", with_tokenizer=False)
    info = served.host.load("bare")
    result = served.host.generate(Request("héllo", max_tokens=3)).result()
    assert result.prompt_tokens == len("héllo".encode())  # one token per UTF-8 byte
    assert served.host.classify(["fine"], LABELS).version == info.version == result.version


LONG = "x" * 300  # 300 byte tokens: over the limit of 200 set below


@pytest.mark.parametrize(
    ("texts", "labels", "template", "match"),
    [
        ([], LABELS, "", "1 to"),
        (["  "], LABELS, "", "empty"),
        (["ok"] * 9, LABELS, "", "1 to 8"),
        (["ok"], [f"l{i}" for i in range(5)], "", "limit is 4"),
        (["ok"], ["a", "a"], "", "distinct"),
        ([LONG], LABELS, "", "limit is 200"),
        (["ok"], LABELS, "no placeholder", "{text}"),
    ],
)
def test_bad_classify_requests_are_invalid(
    tmp_path: Path, texts: list[str], labels: list[str], template: str, match: str
) -> None:
    s = start(tmp_path / "home", max_texts=8, max_labels=4, max_prompt_tokens=200)
    s.host.load("tiny")
    try:
        with pytest.raises(InvalidInput, match=match):
            s.host.classify(texts, labels, template)
        assert s.host.classify(["fine"], LABELS).version == 1
        assert (
            s.host.metrics.count("llmk_inference_requests_total", task="classify", outcome="InvalidInput")
            == 1
        )
    finally:
        s.host.close()


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (Request("", max_tokens=8), "empty"),
        (Request("   ", max_tokens=8), "empty"),
        (Request(messages=[{"role": "user", "content": ""}], max_tokens=8), "empty"),
        (Request("x", max_tokens=0), "max_tokens"),
        (Request("x", max_tokens=51), "max_tokens"),
        (Request(LONG, max_tokens=8), "limit is 200"),
        (Request("x", max_tokens=8, temperature=-1), "temperature"),
    ],
)
def test_bad_generate_requests_are_invalid(tmp_path: Path, request_: Request, match: str) -> None:
    s = start(tmp_path / "home", max_new_tokens=50, max_prompt_tokens=200)
    s.host.load("tiny")
    try:
        with pytest.raises(InvalidInput, match=match):
            s.host.generate(request_)
        assert s.host.generate(Request("fine", max_tokens=2)).result().completion_tokens == 2
    finally:
        s.host.close()


def test_a_burst_beyond_the_queue_is_refused_and_the_rest_served(tmp_path: Path) -> None:
    s = start(tmp_path / "home", max_queue=3, max_sequences=2)
    s.host.load("tiny")
    generator = s.host._served.generator  # type: ignore[union-attr]
    try:
        accepted, refused = [], 0
        with generator.paused():  # nothing is admitted: every request waits in the queue
            for _ in range(8):
                try:
                    accepted.append(s.host.generate(Request("burst", max_tokens=4)))
                except ResourceExhausted:
                    refused += 1
        assert (len(accepted), refused) == (3, 5)
        assert [g.result().completion_tokens for g in accepted] == [4, 4, 4]
        assert (
            s.host.metrics.count(
                "llmk_inference_requests_total", task="generate", outcome="ResourceExhausted"
            )
            == 5
        )
    finally:
        s.host.close()


def test_metrics_report_requests_tokens_and_the_served_version(served: Served) -> None:
    served.host.classify(TEXTS, LABELS)
    served.host.generate(Request("abc", max_tokens=5)).result()
    m = served.host.metrics
    assert m.count("llmk_inference_requests_total", task="classify", outcome="ok") == 1
    assert m.count("llmk_inference_requests_total", task="generate", outcome="ok") == 1
    assert m.count("llmk_inference_tokens_total", kind="completion") == 5
    assert m.count("llmk_inference_served_version", model="tiny", branch="main") == 1
    assert m.count("llmk_inference_resident_bytes") == served.host.info().resident_bytes
    assert m.count("llmk_inference_batch_size_count") >= 1
    assert m.count("llmk_inference_tokens_per_second") > 0
