"""Hot updates: a worker following a branch applies each new version between batches, reading only what it
lacks; every answer is computed by exactly the version it names; a failed update changes nothing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.errors import FailedPrecondition
from services.inference.engine.classifier import classify
from services.inference.engine.generator import Request
from services.inference.engine.model import build_model
from services.inference.usecases.host import Host
from services.inference.usecases.loading import load_tokenizer
from services.store.usecases.store import Store

from .hosting import LABELS, TEMPLATE, TEXTS, create_tiny, perturbed, settings_for
from .test_generator import greedy_reference

CHANGING = [
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.1.self_attn.o_proj.weight",
    "model.norm.weight",
]
PROMPT = "hello"


class RecordingStore:
    """The real embedded client, noting which tensors each fetch asked for and which steps were read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fetched: list[list[str] | None] = []
        self.stepped: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def steps(self, model: str, a: int, b: int) -> Any:
        self.stepped.append((a, b))
        return self.store.steps(model, a, b)

    def fetch(
        self, model: str, ref: str | None = None, selector: str = "", names: list[str] | None = None
    ) -> Any:
        self.fetched.append(names)
        return self.store.fetch(model, ref, selector, names)


def flat(rows: list[dict[str, float]]) -> list[float]:
    return [row[label] for row in rows for label in LABELS]


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.fixture
def client(tmp_path: Path) -> RecordingStore:
    settings = settings_for(tmp_path / "home")
    c = RecordingStore(Deployment(settings).local_store())
    create_tiny(c)
    return c


@pytest.fixture
def host(tmp_path: Path, client: RecordingStore) -> Iterator[Host]:
    settings = settings_for(tmp_path / "home")
    h = Host(settings, client, Deployment(settings).events())
    h.load("tiny")
    yield h
    h.close()


def expected_answers(client: Store, version: str) -> tuple[list[dict[str, float]], list[int]]:
    """What `version` answers, from a model built afresh from the store: probabilities and greedy tokens."""
    model = build_model(json.loads(client.file("tiny", "config.json")), client.fetch("tiny", version))
    tokenizer = load_tokenizer(client, "tiny", list(client.model("tiny").files), 258)
    probs = classify(model, tokenizer, TEXTS[:2], LABELS, TEMPLATE.replace("{text}", "{prompt}"))
    tokens = greedy_reference(model, tokenizer.encode(PROMPT), 12)
    return probs, tokens[
        : tokens.index(tokenizer.eos_token_id) + 1
    ] if tokenizer.eos_token_id in tokens else tokens


def test_an_update_reads_only_the_entries_since_the_served_version(
    host: Host, client: RecordingStore
) -> None:
    v = client.commit_full("tiny", perturbed(client, "tiny", CHANGING[:2], 1))
    wait_until(lambda: host.info().version == v.id)
    assert client.stepped == [(1, v.id)]
    assert {e.kind for e in v.entries} == {"full"}  # every value changed: whole values, of those tensors only
    assert sorted(client.fetched[-1] or []) == sorted(CHANGING[:2])
    probs, _ = expected_answers(client, str(v.id))
    assert flat([s.probabilities for s in host.classify(TEXTS[:2], LABELS).results]) == pytest.approx(
        flat(probs), abs=1e-6
    )
    assert host.metrics.count("llmk_inference_weight_updates_total", outcome="applied") == 1
    assert host.metrics.count("llmk_inference_served_version", model="tiny", branch="main") == v.id


def test_answers_under_load_are_never_computed_from_a_mix_of_versions(
    host: Host, client: RecordingStore
) -> None:
    answers: list[tuple[str, Any]] = []
    stop = threading.Event()

    def classify_forever() -> None:
        while not stop.is_set():
            c = host.classify(TEXTS[:2], LABELS)
            answers.append((c.version, [s.probabilities for s in c.results]))

    def generate_forever() -> None:
        while not stop.is_set():
            r = host.generate(Request(PROMPT, max_tokens=12)).result()
            answers.append((r.version, r.token_ids))

    threads = [threading.Thread(target=f) for f in (classify_forever, classify_forever, generate_forever)]
    for t in threads:
        t.start()
    versions = [1]
    for i in range(5):
        v = client.commit_full("tiny", perturbed(client, "tiny", CHANGING, 10 + i))
        versions.append(v.id)
        wait_until(lambda: host.info().version == versions[-1])
        wait_until(lambda n=len(answers): len(answers) > n + 3)  # a few answers on each version
    stop.set()
    for t in threads:
        t.join()

    expected = {v: expected_answers(client, str(v)) for v in versions}
    distinct = [expected[v][0][0]["positive"] for v in versions]
    assert min(abs(a - b) for i, a in enumerate(distinct) for b in distinct[i + 1 :]) > 1e-5
    for version, answer in answers:
        probs, tokens = expected[version]
        if isinstance(answer[0], dict):
            assert flat(answer) == pytest.approx(flat(probs), abs=1e-6), (
                f"classify answer tagged {version} differs"
            )
        else:
            assert answer == tokens, f"a generation tagged {version} is not its output"
    assert {v for v, _ in answers} == set(versions)


def test_a_failed_update_keeps_the_previous_version_and_is_reported(
    host: Host, client: RecordingStore
) -> None:
    before = host.classify(TEXTS[:2], LABELS)
    changes = perturbed(client, "tiny", CHANGING[:1], 3)
    changes["zzz.unknown.weight"] = torch.ones(3)  # the store accepts a new tensor; the served model has none
    bad = client.commit_full("tiny", changes)  # CHANGING[0] is written first, then undone
    wait_until(lambda: host.info().update_error != "")
    info = host.info()
    assert info.version == 1
    assert f"could not apply version {bad.id}" in info.update_error
    assert "zzz.unknown.weight" in info.update_error
    assert host.metrics.count("llmk_inference_weight_updates_total", outcome="failed") == 1
    after = host.classify(TEXTS[:2], LABELS)
    assert (after.version, after.results) == (1, before.results)


def test_a_rollback_is_applied_by_asking_the_store_what_differs(host: Host, client: RecordingStore) -> None:
    v2 = client.commit_full("tiny", perturbed(client, "tiny", CHANGING, 4))
    wait_until(lambda: host.info().version == v2.id)
    v3 = client.rollback("tiny", "1")  # its event says any tensor may differ
    wait_until(lambda: host.info().version == v3.id)
    assert sorted(client.fetched[-1] or []) == sorted(CHANGING)
    probs, _ = expected_answers(client, "1")
    assert flat([s.probabilities for s in host.classify(TEXTS[:2], LABELS).results]) == pytest.approx(
        flat(probs), abs=1e-6
    )


def test_a_missed_event_is_caught_up_from_the_branch_head(tmp_path: Path, client: RecordingStore) -> None:
    settings = settings_for(tmp_path / "home", version_poll_seconds=0.05)
    deaf = Host(settings, client)  # no event subscription at all
    try:
        deaf.load("tiny")
        v = client.commit_full("tiny", perturbed(client, "tiny", CHANGING[:1], 5))
        wait_until(lambda: deaf.info().version == v.id)
        assert client.stepped[-1] == (1, v.id)
    finally:
        deaf.close()


def test_a_pinned_request_refuses_an_answer_from_a_newer_version(host: Host, client: RecordingStore) -> None:
    generator = host._served.generator  # type: ignore[union-attr]
    with generator.paused():  # the request waits in the queue while the update lands
        pinned = host.generate(Request(PROMPT, max_tokens=3), version="1")
        v = client.commit_full("tiny", perturbed(client, "tiny", CHANGING[:1], 6))
        wait_until(lambda: host.info().version == v.id)
    with pytest.raises(FailedPrecondition, match="replaced"):
        pinned.result()
