"""A rec worker follows its branch: a streamed version reaches its answers without a restart, one version
per answer, events only as hints; its gRPC service answers the same as in process, bad input as statuses."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmk.bootstrap import Deployment, reached_over_grpc
from llmk.domain.versions import VersionEvent
from llmk.errors import InvalidInput, NotFound, Unavailable
from services.rec.interface import Interaction
from services.rec.main import Running, build
from services.rec.usecases import recommender
from services.rec.usecases.following import RecWorker
from services.rec.usecases.streaming import CommitPolicy, Streamer
from services.store.usecases.store import Store
from tests.conftest import make_settings
from tests.unit.rec.test_rec import CONFIG, SPEC, clustered

NEW_USER = 77


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    settings = make_settings(tmp_path / "home").model_copy(
        update={"broker_url": f"memory://rec-{tmp_path.name}", "version_poll_seconds": 0.0}
    )
    found = Deployment(settings)
    yield found
    found.engine.dispose()


@pytest.fixture
def store(deployment: Deployment) -> Store:
    s = deployment.local_store()
    recommender.create(s, "rec", clustered(range(30)), {1: "One"}, CONFIG, SPEC)
    return s


def stream_new_user(store: Store, user: int = NEW_USER, t0: int = 10_000) -> int:
    tables, head = recommender.load(store, "rec")
    streamer = Streamer(store, "rec", "main", head, tables, CommitPolicy())
    streamer.consume([Interaction(user, item, 5.0, t0 + item) for item in range(3)])
    return store.head("rec")


def wait_for(worker: RecWorker, version: int) -> None:
    deadline = time.monotonic() + 20
    while worker.version != version:
        assert time.monotonic() < deadline, f"worker on {worker.version}, expected {version}: {worker.error}"
        time.sleep(0.01)


def test_a_streamed_version_is_served_on_its_event(deployment: Deployment, store: Store) -> None:
    worker = RecWorker(store, "rec", poll_seconds=0)
    unsubscribe = deployment.events().subscribe(worker.on_event)
    try:
        before = worker.recommend(NEW_USER, k=3)
        assert before.popular
        assert before.version == 1
        committed = stream_new_user(store)
        wait_for(worker, committed)
        after = worker.recommend(NEW_USER, k=3)
    finally:
        unsubscribe()
        worker.close()
    assert not after.popular
    assert after.version == committed


def test_an_event_is_a_hint_the_store_confirms(store: Store) -> None:
    worker = RecWorker(store, "rec", poll_seconds=0)
    try:
        worker.on_event(VersionEvent("rec", "main", 99, 1, ("user.ids",)))  # forged: no version 99
        committed = stream_new_user(store)  # landed silently: no event reaches the worker
        worker.on_event(VersionEvent("rec", "main", 99, 1, None))
        wait_for(worker, committed)  # it moved where the store's head is, not where the event said
    finally:
        worker.close()
    assert worker.error == ""


def test_answers_never_mix_versions_while_rows_change(store: Store) -> None:
    """While versions are applied, each answer's scores are the ones its version gives."""
    worker = RecWorker(store, "rec", poll_seconds=0)
    by_version: dict[int, list[float]] = {}
    answers: list[tuple[int, list[float]]] = []
    done = threading.Event()

    def ask() -> None:
        while not done.is_set():
            a = worker.recommend(3, k=5)
            answers.append((a.version, [s.score for s in a.items]))

    reader = threading.Thread(target=ask)
    reader.start()
    try:
        for n in range(5):
            committed = stream_new_user(store, user=3, t0=20_000 + 100 * n)
            worker.check()  # no events here: a look at the head, as the periodic poll takes
            wait_for(worker, committed)
            by_version[worker.version] = [s.score for s in worker.recommend(3, k=5).items]
    finally:
        done.set()
        reader.join()
        worker.close()
    for version, scores in answers:
        if version in by_version:
            assert scores == by_version[version]
    assert {v for v, _ in answers} > {1}


def test_a_rollback_is_loaded_whole_and_a_tag_is_pinned(store: Store) -> None:
    store.tag("rec", "first", "main")
    worker = RecWorker(store, "rec", poll_seconds=0)
    pinned = RecWorker(store, "rec", "first", poll_seconds=0)
    try:
        committed = stream_new_user(store)
        worker.check()
        wait_for(worker, committed)
        store.rollback("rec", "1")
        worker.check()
        wait_for(worker, store.head("rec"))
        assert worker.recommend(NEW_USER).popular  # the rolled-back rows are gone from its answers
        assert pinned.branch == ""
        assert pinned.version == 1
    finally:
        worker.close()
        pinned.close()
    with pytest.raises(InvalidInput, match="no branch, tag or version 'nope'"):
        RecWorker(store, "rec", "nope")


@pytest.fixture
def running(deployment: Deployment, store: Store) -> Iterator[Running]:
    settings = deployment.settings.model_copy(update={"serve_model": "rec", "listen": "127.0.0.1:0"})
    found = build(Deployment(settings))
    found.server.start()
    yield found
    found.stop()


def test_grpc_answers_as_in_process_and_follows(
    deployment: Deployment, store: Store, running: Running
) -> None:
    client = Deployment(reached_over_grpc(deployment.settings, rec=f"127.0.0.1:{running.port}")).rec("rec")
    try:
        local = recommender.serve(store, "rec").recommend(3, k=4, exclude=frozenset({1, 2}))
        remote = client.recommend(3, k=4, exclude=frozenset({1, 2}))
        assert [s.item for s in remote.items] == [s.item for s in local.items]
        assert remote.version == local.version == 1
        committed = stream_new_user(store)
        wait_for(running.worker, committed)
        assert client.recommend(NEW_USER, k=3).version == committed
        with pytest.raises(InvalidInput, match="k must be between"):
            client.recommend(3, k=-1)
    finally:
        client.close()
    other = Deployment(reached_over_grpc(deployment.settings, rec=f"127.0.0.1:{running.port}"))
    wrong = other.rec("other")
    with pytest.raises(NotFound, match="serves 'rec', not 'other'"):
        wrong.recommend(3)
    wrong.close()
    with pytest.raises(InvalidInput, match="serves its own branch"):
        other.rec("rec", "first")


def test_serve_refuses_a_taken_port_and_a_missing_model(deployment: Deployment, running: Running) -> None:
    taken = deployment.settings.model_copy(
        update={"serve_model": "rec", "listen": f"127.0.0.1:{running.port}"}
    )
    with pytest.raises(Unavailable, match="could not listen"):
        build(Deployment(taken))
    with pytest.raises(InvalidInput, match="name the model to serve"):
        build(Deployment(deployment.settings))
    with pytest.raises(NotFound):
        build(Deployment(deployment.settings.model_copy(update={"serve_model": "absent"})))


def test_a_quiet_source_still_commits_on_time(store: Store) -> None:
    """A pipe that goes quiet after an interaction does not hold its version back until the next one."""
    from services.rec.adapters.files import ticking

    def quiet() -> Iterator[Interaction]:
        yield Interaction(NEW_USER, 1, 5.0, 10_000)
        time.sleep(1.5)
        yield Interaction(NEW_USER, 2, 5.0, 10_001)

    tables, head = recommender.load(store, "rec")
    committed: list[float] = []
    started = time.monotonic()
    streamer = Streamer(
        store, "rec", "main", head, tables, CommitPolicy(every_seconds=0.2),
        lambda version, entries: committed.append(time.monotonic() - started),
    )  # fmt: skip
    summary = streamer.consume(ticking(quiet(), 0.05))
    assert len(summary.versions) == 2
    assert committed[0] < 1.0  # committed during the silence, not when the second record came
