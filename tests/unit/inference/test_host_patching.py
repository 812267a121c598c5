"""Hot updates from typed entries: a worker applies sparse, row, low-rank and dense entries to its plain
weights in place and ends bit-identical to a model built from a full fetch of the new version; weights held
in another form (int8) get whole values instead."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.domain.deltas import Delta, Kind
from services.inference.engine.compress import apply_options
from services.inference.engine.model import build_model
from services.inference.usecases.host import Host
from services.inference.usecases.patching import plan
from services.store.interface import Step
from services.store.usecases.store import Store

from .hosting import create_tiny, settings_for
from .test_host_updates import wait_until

UP0 = "model.layers.0.mlp.up_proj.weight"  # [128, 64]
O1 = "model.layers.1.self_attn.o_proj.weight"  # [64, 64]
EMBED = "model.embed_tokens.weight"
NORM = "model.norm.weight"  # [64]


class CountingStore:
    """The real embedded client, noting the names of each whole-value fetch and each steps call."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fetched: list[list[str] | None] = []
        self.stepped: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def fetch(self, model: str, ref: str | None = None, selector: str = "", names: Any = None) -> Any:
        self.fetched.append(names)
        return self.store.fetch(model, ref, selector, names)

    def steps(self, model: str, a: int, b: int) -> list[Step] | None:
        self.stepped.append((a, b))
        return self.store.steps(model, a, b)


@pytest.fixture
def client(tmp_path: Path) -> CountingStore:
    c = CountingStore(Deployment(settings_for(tmp_path / "home")).local_store())
    create_tiny(c)
    return c


@pytest.fixture
def host(tmp_path: Path, client: CountingStore) -> Iterator[Host]:
    settings = settings_for(tmp_path / "home")
    h = Host(settings, client, Deployment(settings).events())
    h.load("tiny")
    yield h
    h.close()


def every_kind(seed: int) -> dict[str, Delta]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(128 * 64, generator=g)[:80]
    return {
        UP0: Delta(Kind.SPARSE_SET, {"indices": idx, "values": torch.randn(80, generator=g)}),
        O1: Delta(
            Kind.LOW_RANK, {"a": torch.randn(64, 2, generator=g), "b": torch.randn(2, 64, generator=g)}
        ),
        EMBED: Delta(
            Kind.ROWS, {"rows": torch.tensor([3, 70, 200]), "values": torch.randn(3, 64, generator=g)}
        ),
        NORM: Delta(Kind.DENSE, {"diff": torch.randn(64, generator=g) * 1e-3}),
    }


def served_weights(host: Host) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in host._served.model.named_parameters()}  # type: ignore[union-attr]


def test_entries_applied_in_place_match_a_full_fetch_bit_for_bit(host: Host, client: CountingStore) -> None:
    more = Delta(Kind.SPARSE, {"indices": torch.tensor([5, 9]), "values": torch.tensor([0.25, -1.0])})
    rows_set = Delta(Kind.ROWS_SET, {"rows": torch.tensor([1]), "values": torch.zeros(1, 64)})
    last = 0
    for entries in (every_kind(1), {UP0: more, EMBED: rows_set}, every_kind(2)):
        last = client.commit("tiny", entries).id
    wait_until(lambda: host.info().version == last)
    assert host.info().update_error == ""
    assert client.fetched == [None], "no whole value was fetched after the load"
    assert client.stepped
    assert client.stepped[-1][1] == last
    config = json.loads(client.file("tiny", "config.json"))
    fresh = dict(build_model(config, client.fetch("tiny", str(last))).named_parameters())
    served = served_weights(host)
    for name, value in fresh.items():
        assert torch.equal(served[name].view(torch.int32), value.detach().view(torch.int32)), name


def test_a_rollback_fetches_whole_values_of_the_changed_tensors(host: Host, client: CountingStore) -> None:
    v2 = client.commit("tiny", every_kind(3)).id
    wait_until(lambda: host.info().version == v2)
    back = client.rollback("tiny", "1").id
    wait_until(lambda: host.info().version == back)
    assert sorted(client.fetched[-1] or []) == sorted(every_kind(3))
    fresh = client.fetch("tiny", "1")
    served = served_weights(host)
    assert all(torch.equal(served[n], fresh[n]) for n in every_kind(3))


def test_converted_weights_get_whole_values_and_plain_ones_entries() -> None:
    from .hosting import tiny_model

    config, tensors = tiny_model()
    model = build_model(config, tensors)
    apply_options(model, ["int8"])
    patch = plan(model, [Step(2, every_kind(4))])
    assert patch.whole == {UP0, O1}  # linear weights are held as int8: whole values, re-quantized
    assert [n for n, _ in patch.in_place] == [EMBED, NORM]


def test_a_full_entry_or_another_dtype_is_not_applied_in_place() -> None:
    from .hosting import tiny_model

    config, tensors = tiny_model()
    model = build_model(config, tensors)
    half = Delta(
        Kind.SPARSE, {"indices": torch.tensor([1]), "values": torch.tensor([1.0], dtype=torch.float16)}
    )
    exact = Delta(
        Kind.SPARSE_SET, {"indices": torch.tensor([1]), "values": torch.tensor([1.0], dtype=torch.float16)}
    )
    full = Delta(Kind.FULL, {"tensor": torch.zeros(64)})
    dense = Delta(Kind.DENSE, {"diff": torch.ones(64)})
    patch = plan(model, [Step(2, {UP0: half, O1: exact}), Step(3, {NORM: dense}), Step(4, {NORM: full})])
    assert patch.whole == {UP0, NORM}
    assert [n for n, _ in patch.in_place] == [O1]
