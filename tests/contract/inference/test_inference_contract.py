"""The inference tier's contract: the client the composition root's factory hands out answers the same
records and raises the same llmk errors whether the model is served in this process or by a worker over
gRPC (tests/contract/conftest.py runs every test with both). A tiny seeded model keeps it fast; the store
behind it is SQLite only, since the store's own suite covers PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.errors import InvalidInput, LlmkError, NotFound
from services.inference.interface import Classification, Finished, GenerateRequest, InferenceClient
from services.inference.main import Worker, build
from tests.unit.inference.hosting import LABELS, TEXTS, create_tiny, perturbed, settings_for

HEAD = 2  # the tiny model's main branch: version 1 imported, version 2 committed on it, tagged `best`
Opener = Callable[..., AbstractContextManager[InferenceClient]]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("inference") / "home"
    store = Deployment(settings_for(home)).local_store()
    create_tiny(store)
    assert store.commit_full("tiny", perturbed(store, "tiny", ["model.norm.weight"], seed=1)).id == HEAD
    store.tag("tiny", "best", str(HEAD))
    store.close()
    return home


@pytest.fixture(scope="module")
def worker(home: Path) -> Iterator[Worker]:
    """A worker serving tiny@main over gRPC, in this process."""
    running = build(Deployment(settings_for(home, serve_model="tiny")))
    running.server.start()
    yield running
    running.stop()


@pytest.fixture
def settings(transport: str, home: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings naming the worker's address for gRPC, none for in-process: the factory chooses from them."""
    if transport == "local":
        return settings_for(home)
    worker: Worker = request.getfixturevalue("worker")
    return settings_for(home, inference_address=f"127.0.0.1:{worker.port}")


@pytest.fixture
def opened(settings: Settings) -> Opener:
    """Factory: opened(model, ref) -> a client from the composition root's factory, closed afterwards."""

    @contextmanager
    def open_client(model: str = "tiny", ref: str | None = None) -> Iterator[InferenceClient]:
        client = Deployment(settings).inference(model, ref)
        try:
            yield client
        finally:
            client.close()

    return open_client


def generated(client: InferenceClient, request: GenerateRequest) -> tuple[list[str], Finished]:
    items = list(client.generate(request))
    pieces, last = items[:-1], items[-1]
    assert all(isinstance(p, str) for p in pieces)
    assert isinstance(last, Finished)
    return [str(p) for p in pieces], last


def test_classify_scores_every_text_on_one_version(opened: Opener) -> None:
    with opened() as client:
        answer = client.classify(TEXTS, LABELS)
    assert isinstance(answer, Classification)
    assert answer.version == HEAD
    assert len(answer.results) == len(TEXTS)
    for scores in answer.results:
        assert sorted(scores.probabilities) == sorted(LABELS)
        assert sum(scores.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        assert scores.label == max(scores.probabilities, key=scores.probabilities.__getitem__)
        assert scores.prompt_tokens > 0


def test_generate_streams_text_then_finished(opened: Opener) -> None:
    with opened() as client:
        pieces, done = generated(client, GenerateRequest("Hi", max_tokens=6, chat=False))
        _, chat = generated(client, GenerateRequest("Hi", max_tokens=3))
    assert done.version == chat.version == HEAD
    assert done.completion_tokens == 6
    assert done.finish_reason == "length"
    assert "".join(pieces)
    assert done.prompt_tokens == 2
    assert chat.prompt_tokens > done.prompt_tokens  # the chat template's turn


@pytest.mark.parametrize("ref", [str(HEAD), "best", "main"])
def test_a_pinned_version_is_the_one_that_answers(opened: Opener, ref: str) -> None:
    with opened("tiny", ref) as client:
        assert client.classify(TEXTS[:2], LABELS).version == HEAD
        assert generated(client, GenerateRequest("Hi", max_tokens=2, chat=False))[1].version == HEAD


@pytest.mark.parametrize(("model", "ref"), [("no-such-model", None), ("tiny", "42"), ("tiny", "no-tag")])
def test_an_unknown_model_or_version_is_not_found(opened: Opener, model: str, ref: str | None) -> None:
    """In-process the model loads when the client opens, a worker checks on each call: both say NotFound."""
    with pytest.raises(NotFound), opened(model, ref) as client:
        client.classify(TEXTS[:1], LABELS)


BAD_CLASSIFY = {
    "no-texts": ([], LABELS, ""),
    "empty-text": (["  "], LABELS, ""),
    "template-without-text": (["fine"], LABELS, "no slot for the text"),
}
BAD_GENERATE = {
    "too-many-tokens": GenerateRequest("Hi", max_tokens=1_000_000),
    "empty-prompt": GenerateRequest("   ", chat=False),
}


def one_line(error: LlmkError) -> str:
    message = str(error)
    assert message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("case", sorted(BAD_CLASSIFY))
def test_a_bad_classify_request_is_invalid_input(opened: Opener, case: str) -> None:
    texts, labels, template = BAD_CLASSIFY[case]
    with opened() as client:
        with pytest.raises(InvalidInput) as caught:
            client.classify(texts, labels, template)
        assert type(caught.value) is InvalidInput
        one_line(caught.value)
        assert client.classify(TEXTS[:1], LABELS).version == HEAD  # still serving


@pytest.mark.parametrize("case", sorted(BAD_GENERATE))
def test_a_bad_generate_request_is_invalid_input(opened: Opener, case: str) -> None:
    with opened() as client:
        with pytest.raises(InvalidInput) as caught:
            list(client.generate(BAD_GENERATE[case]))
        assert type(caught.value) is InvalidInput
        one_line(caught.value)
        assert generated(client, GenerateRequest("Hi", max_tokens=1))[1].version == HEAD


def test_a_request_for_no_tokens_is_refused_before_it_is_sent() -> None:
    """Over gRPC a 0 would read as "the default", so the record itself refuses it."""
    with pytest.raises(InvalidInput, match="max_tokens must be at least 1"):
        GenerateRequest("Hi", max_tokens=0)


def test_both_transports_give_the_same_answers(home: Path, worker: Worker) -> None:
    """Not per transport: the same request through each, compared (gRPC carries float32)."""
    answers = []
    for settings in (settings_for(home), settings_for(home, inference_address=f"127.0.0.1:{worker.port}")):
        client = Deployment(settings).inference("tiny", None)
        try:
            text, done = generated(client, GenerateRequest("Hello", max_tokens=8, chat=False))
            answers.append((client.classify(TEXTS, LABELS), "".join(text), done))
        finally:
            client.close()
    (local, local_text, local_done), (remote, remote_text, remote_done) = answers
    assert (local_text, local_done) == (remote_text, remote_done)
    assert [r.label for r in local.results] == [r.label for r in remote.results]
    for a, b in zip(local.results, remote.results, strict=True):
        assert a.prompt_tokens == b.prompt_tokens
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)
