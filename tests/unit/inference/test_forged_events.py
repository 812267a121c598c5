"""A version event is a hint, never an authority: anyone who can publish to the events exchange must not
make a worker serve a version its branch does not hold."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmk.bootstrap import Deployment
from llmk.domain.versions import VersionEvent
from services.inference.usecases.host import Host
from services.store.usecases.store import Store

from .hosting import create_tiny, perturbed, settings_for
from .test_host_updates import CHANGING, wait_until


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Deployment(settings_for(tmp_path / "home")).local_store()
    create_tiny(s)
    return s


@pytest.fixture
def host(tmp_path: Path, store: Store) -> Iterator[Host]:
    settings = settings_for(tmp_path / "home")
    h = Host(settings, store, Deployment(settings).events())
    h.load("tiny")
    yield h
    h.close()


def test_a_forged_event_naming_another_branchs_version_is_not_served(
    tmp_path: Path, host: Host, store: Store
) -> None:
    store.branch("tiny", "exp", "main")
    other = store.commit_full("tiny", perturbed(store, "tiny", CHANGING[:1], 7), branch="exp")
    forged = VersionEvent("tiny", "main", other.id, 1, tuple(CHANGING[:1]))
    Deployment(settings_for(tmp_path / "home")).events().publish(forged)
    time.sleep(0.5)  # the follower handles its inbox within milliseconds
    assert host.info().version == 1
    assert host.metrics.count("llmk_inference_weight_updates_total", outcome="applied") == 0

    real = store.commit_full("tiny", perturbed(store, "tiny", CHANGING[1:2], 8))
    wait_until(lambda: host.info().version == real.id)  # genuine events are still followed
    back = store.rollback("tiny", "1")
    wait_until(lambda: host.info().version == back.id)  # and a rollback the store made too
