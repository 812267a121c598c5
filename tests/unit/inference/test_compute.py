"""The compute thread: every model computation of a serving worker runs on one thread, so torch's OpenMP
runtime keeps one pool of workers that spin between ops instead of several that sleep (see compute.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from llmk.bootstrap import Deployment
from llmk.domain.deltas import Delta, Kind
from services.inference.engine import compute
from services.inference.engine.generator import Request
from services.inference.usecases import follower as updates
from services.inference.usecases import loading
from services.inference.usecases.host import Host

from .hosting import LABELS, TEXTS, create_tiny, settings_for
from .test_host_updates import wait_until


def thread_name() -> str:
    return threading.current_thread().name


def test_a_call_returns_its_result_from_the_compute_thread() -> None:
    assert compute.run(thread_name) == "llmk-compute"
    assert compute.run(lambda a, b=0: a + b, 2, b=3) == 5


def test_a_call_raises_its_error_in_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        compute.run(fail)
    assert compute.run(thread_name) == "llmk-compute"  # the thread survives its callers' errors


def test_the_callers_grad_mode_holds_on_the_compute_thread() -> None:
    with torch.no_grad():
        assert compute.run(torch.is_grad_enabled) is False
    assert compute.run(torch.is_grad_enabled) is True


def test_a_call_made_on_the_compute_thread_runs_inline() -> None:
    assert compute.run(lambda: compute.run(thread_name)) == "llmk-compute"


def test_calls_from_many_threads_run_on_one_thread_one_at_a_time() -> None:
    running, most = 0, 0
    lock = threading.Lock()

    def work(_: int) -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        torch.randn(64, 64) @ torch.randn(64, 64)
        with lock:
            running -= 1
        return thread_name()

    with ThreadPoolExecutor(8) as pool:
        names = set(pool.map(lambda i: compute.run(work, i), range(64)))
    assert names == {"llmk-compute"}
    assert most == 1


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, set[str]]]:
    """The threads that built the model, ran any module's forward, and wrote weights in place."""
    threads: dict[str, set[str]] = {"build": set(), "forward": set(), "update": set()}

    def build(*args: Any, **kwargs: Any) -> Any:
        threads["build"].add(thread_name())
        return original_build(*args, **kwargs)

    def apply(*args: Any, **kwargs: Any) -> Any:
        threads["update"].add(thread_name())
        return original_apply(*args, **kwargs)

    original_build, original_apply = loading.build_model, updates.apply_in_place
    monkeypatch.setattr(loading, "build_model", build)
    monkeypatch.setattr(updates, "apply_in_place", apply)
    hook = nn.modules.module.register_module_forward_pre_hook(
        lambda *_: threads["forward"].add(thread_name())
    )
    yield threads
    hook.remove()


def test_a_host_loads_answers_and_applies_updates_on_the_compute_thread(
    tmp_path: Path, seen: dict[str, set[str]]
) -> None:
    settings = settings_for(tmp_path / "home")
    store = Deployment(settings).local_store()
    create_tiny(store)
    host = Host(settings, store, Deployment(settings).events())
    try:
        host.load("tiny")
        host.classify(TEXTS[:2], LABELS)
        host.generate(Request("hello", max_tokens=4)).result()
        sparse = Delta(Kind.SPARSE, {"indices": torch.tensor([5, 9]), "values": torch.tensor([0.25, -1.0])})
        v = store.commit("tiny", {"model.layers.0.mlp.up_proj.weight": sparse})
        wait_until(lambda: host.info().version == v.id)
    finally:
        host.close()
    assert seen == {"build": {"llmk-compute"}, "forward": {"llmk-compute"}, "update": {"llmk-compute"}}
