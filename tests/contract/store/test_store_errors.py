"""Every bad input gets its error class on every client and backend, and leaves nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmk.domain.deltas import Delta, Kind, full
from llmk.domain.versions import CommitInfo
from llmk.errors import AlreadyExists, Conflict, Corrupt, InvalidDelta, InvalidInput, NotFound
from tests.contract.store.contract_support import (
    EMBED,
    NORM,
    Q0,
    UP0,
    assert_same_tensors,
    corrupt_in_place,
    rows,
    sparse,
    truncate,
)

NOT_FOUND = {
    "fetch of an unknown model": lambda e, tmp: e.client.fetch("nope"),
    "fetch of an unknown version": lambda e, tmp: e.client.fetch(e.model, "999"),
    "fetch of an unknown branch": lambda e, tmp: e.client.fetch(e.model, "nobranch"),
    "fetch of a version beyond int64": lambda e, tmp: e.client.fetch(e.model, "999999999999999999999"),
    "fetch of a version in Unicode digits": lambda e, tmp: e.client.fetch(e.model, "²"),
    "rollback to a version beyond int64": lambda e, tmp: e.client.rollback(e.model, "9" * 30),
    "version of an unknown model": lambda e, tmp: e.client.version("nope"),
    "model that does not exist": lambda e, tmp: e.client.model("nope"),
    "log of an unknown branch": lambda e, tmp: e.client.log(e.model, "nobranch"),
    "commit to an unknown model": lambda e, tmp: e.client.commit("nope", {NORM: full(torch.ones(64))}),
    "commit on a parent of an unknown branch": lambda e, tmp: e.client.commit(
        e.model, {NORM: sparse([0], [1.0])}, "nobranch", e.first
    ),
    "commit of full values on an unknown parent": lambda e, tmp: e.client.commit(
        e.model, {NORM: full(torch.ones(64))}, "main", 999
    ),
    "commit of a delta on an unknown parent": lambda e, tmp: e.client.commit(
        e.model, {NORM: sparse([0], [1.0])}, "main", 999
    ),
    "commit_full on an unknown parent": lambda e, tmp: e.client.commit_full(
        e.model, {NORM: torch.zeros(64)}, "main", 999
    ),
    "commit_full to an unknown model": lambda e, tmp: e.client.commit_full("nope", {NORM: torch.ones(64)}),
    "diff against an unknown version": lambda e, tmp: e.client.diff(e.model, "main", "999"),
    "branch from an unknown ref": lambda e, tmp: e.client.branch(e.model, "b", "nope"),
    "tag of an unknown ref": lambda e, tmp: e.client.tag(e.model, "t", "999"),
    "rollback to an unknown version": lambda e, tmp: e.client.rollback(e.model, "999"),
    "rollback of an unknown branch": lambda e, tmp: e.client.rollback(e.model, str(e.first), "nobranch"),
    "squash of an unknown ref": lambda e, tmp: e.client.squash(e.model, "nobranch"),
    "stats of an unknown model": lambda e, tmp: e.client.stats("nope"),
    "freeze of an unknown model": lambda e, tmp: e.client.freeze("nope", ["model"]),
    "unknown model file": lambda e, tmp: e.client.file(e.model, "nope.json"),
    "export of an unknown model": lambda e, tmp: e.client.export("nope", None, tmp / "x.safetensors"),
}


def expect_each(error: type[Exception], cases: dict, *args: object) -> None:
    """Run every case (one store set-up for all); report each case that raised anything else."""
    wrong = {}
    for label, call in cases.items():
        try:
            call(*args)
            wrong[label] = "no error"
        except error:
            pass
        except Exception as e:  # reported below, with the case's name
            wrong[label] = f"{type(e).__name__}: {e}"
    assert not wrong, f"expected {error.__name__}: {wrong}"


def test_not_found(env, tmp_path) -> None:
    before, refs = env.history(), env.client.refs(env.model)
    expect_each(NotFound, NOT_FOUND, env, tmp_path)
    assert env.history() == before
    assert env.client.refs(env.model) == refs
    assert not (tmp_path / "x.safetensors").exists()


def test_a_version_of_another_model_is_not_found(env) -> None:
    other = env.client.create_model("other", {"w": torch.ones(2)}, {}, {})
    with pytest.raises(NotFound):
        env.client.fetch(env.model, str(other.id))
    with pytest.raises(NotFound):
        env.client.rollback(env.model, str(other.id))


def test_a_stale_parent_is_a_conflict(env) -> None:
    v2 = env.client.commit(env.model, {UP0: sparse([0], [1.0])}, "main", env.first)
    before = env.history()
    with pytest.raises(Conflict, match="moved"):
        env.client.commit(env.model, {UP0: sparse([1], [1.0])}, "main", env.first)
    new = env.client.fetch(env.model, names=[UP0])
    new[UP0] += 1
    with pytest.raises(Conflict):
        env.client.commit_full(env.model, new, "main", env.first)
    assert env.history() == before
    assert env.head() == v2.id
    assert env.client.fetch(env.model, names=[UP0])[UP0].view(-1)[1] == env.tensors[UP0].view(-1)[1]


BAD_DELTAS = {
    "shape": {NORM: Delta(Kind.DENSE, {"diff": torch.zeros(63)})},
    "rows shape": {EMBED: rows([1], torch.zeros(1, 65))},
    "dtype": {UP0: Delta(Kind.SPARSE, {"indices": torch.tensor([0]), "values": torch.ones(1).half()})},
    "index": {UP0: sparse([0, 128 * 64], [1.0, 1.0])},
    "negative index": {UP0: sparse([-1], [1.0], Kind.SPARSE_SET)},
    "row": {EMBED: rows([49152], torch.zeros(1, 64))},
    "nan": {UP0: sparse([0, 1], [1.0, float("nan")])},
    "inf": {Q0: Delta(Kind.LOW_RANK, {"a": torch.full((64, 1), float("inf")), "b": torch.ones(1, 64)})},
    "low rank shape": {Q0: Delta(Kind.LOW_RANK, {"a": torch.ones(64, 1), "b": torch.ones(1, 32)})},
    "unknown tensor": {"model.layers.9.mlp.up_proj.weight": sparse([0], [1.0])},
    "nan in a new full tensor": {"model.extra": full(torch.tensor([float("nan")]))},
    "one bad among good": {NORM: full(torch.zeros(64)), UP0: sparse([0], [float("inf")])},
    "low rank that overflows": {
        Q0: Delta(Kind.LOW_RANK, {"a": torch.full((64, 1), 1e20), "b": torch.full((1, 64), 1e20)})
    },
    "sparse add that overflows": {UP0: sparse([0, 0], [3e38, 3e38])},
    "full value of another shape": {NORM: full(torch.ones(7, 3))},
    "full value of another dtype": {NORM: full(torch.ones(64, dtype=torch.float16))},
}


def test_an_invalid_delta_is_rejected_whole(env) -> None:
    before = env.history()
    commits = {
        label: (lambda entries=entries: env.client.commit(env.model, entries, "main", env.first))
        for label, entries in BAD_DELTAS.items()
    }
    expect_each(InvalidDelta, commits)
    assert env.history() == before
    assert_same_tensors(env.client.fetch(env.model), env.tensors)


BAD_FULL = {
    "shape": {NORM: torch.ones(65)},
    "dtype": {NORM: torch.ones(64, dtype=torch.bfloat16)},
    "nan": {NORM: torch.full((64,), float("nan"))},
    "inf in a new tensor": {"model.extra": torch.tensor([float("inf")])},
}


def test_commit_full_rejects_values_that_do_not_fit(env) -> None:
    before = env.history()
    commits = {
        label: (lambda tensors=tensors: env.client.commit_full(env.model, tensors))
        for label, tensors in BAD_FULL.items()
    }
    expect_each(InvalidDelta, commits)
    assert env.history() == before


def test_bad_names_and_empty_commits_are_invalid_input(env) -> None:
    before = env.history()
    with pytest.raises(InvalidInput):
        env.client.commit(env.model, {})
    with pytest.raises(InvalidInput):
        env.client.create_model("a/b", {"w": torch.ones(1)}, {}, {})
    with pytest.raises(InvalidInput):
        env.client.create_model("42", {"w": torch.ones(1)}, {}, {})
    with pytest.raises(InvalidInput):
        env.client.tag(env.model, "with space", "main")
    with pytest.raises(AlreadyExists):
        env.client.create_model(env.model, {"w": torch.ones(1)}, {}, {})
    assert env.history() == before
    assert [m.name for m in env.client.models()] == [env.model]


@pytest.mark.parametrize(
    "tensors",
    [{"w": torch.tensor([1.0, float("nan")])}, {}],
    ids=["nan", "no tensors"],
)
def test_a_rejected_import_creates_no_model(env, tensors) -> None:
    with pytest.raises(InvalidInput):  # InvalidDelta is an InvalidInput
        env.client.create_model("broken", tensors, {}, {"config.json": b"{}"})
    assert [m.name for m in env.client.models()] == [env.model]
    with pytest.raises(NotFound):
        env.client.model("broken")
    v = env.client.create_model("broken", {"w": torch.ones(2)}, {}, {}, CommitInfo(message="retry"))
    assert env.client.version("broken").id == v.id


def object_of(env, version: int, name: str) -> Path:  # env: conftest.Env
    sha = next(e.object for e in env.client.version(env.model, str(version)).entries if e.name == name)
    return env.objects / sha[:2] / sha[2:]


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_a_damaged_object_is_never_served(env, tmp_path, damage: str) -> None:
    v2 = env.client.commit(env.model, {UP0: sparse([0], [1.0])})
    path = object_of(env, env.first, UP0)
    {"corrupt": corrupt_in_place, "truncate": truncate, "delete": lambda p: p.unlink()}[damage](path)
    before = env.history()
    with pytest.raises(Corrupt):
        env.client.fetch(env.model)
    with pytest.raises(Corrupt):
        env.client.fetch(env.model, str(env.first), names=[UP0])
    with pytest.raises(Corrupt):
        env.client.export(env.model, None, tmp_path / "out.safetensors")
    assert not list(tmp_path.glob("out.safetensors*")), "no partial export"
    new = {UP0: env.tensors[UP0] + 1}
    with pytest.raises(Corrupt):
        env.client.commit_full(env.model, new, "main", v2.id)
    with pytest.raises(Corrupt):
        env.client.squash(env.model)
    assert env.history() == before
    with pytest.raises(Corrupt):
        env.client.stats(env.model)


def test_a_corrupt_model_file_is_never_served(env) -> None:
    sha = env.inspect.model(env.model).files["config.json"]
    corrupt_in_place(env.objects / sha[:2] / sha[2:])
    with pytest.raises(Corrupt):
        env.client.file(env.model, "config.json")


def test_an_import_that_died_before_its_first_version_can_be_redone(store) -> None:
    from llmk.domain.versions import CommitInfo
    from services.store.adapters.importers import load_source

    imported = load_source("synthetic:llama-tiny")
    store.catalog.create_model("half", imported.config, {})  # the row a killed import leaves behind
    v = store.create_model("half", imported.tensors, imported.config, imported.files, CommitInfo())
    assert [r.name for r in store.refs("half")] == ["main"]
    assert store.resolve("half") == v.id


BAD_IMPORTS = {
    "file name climbing out": ("m", {"w": torch.ones(1)}, {"../../x": b"x"}),
    "absolute file name": ("m", {"w": torch.ones(1)}, {"/abs/x": b"x"}),
    "file name in a folder": ("m", {"w": torch.ones(1)}, {"sub/tokenizer.json": b"x"}),
    "hidden file name": ("m", {"w": torch.ones(1)}, {".env": b"x"}),
    "tensor name with a slash": ("m", {"a/b": torch.ones(1)}, {}),
    "over-long model name": ("m" * 201, {"w": torch.ones(1)}, {}),
    "non-ASCII model name": ("modèle", {"w": torch.ones(1)}, {}),
}


def test_bad_names_are_refused_before_anything_is_written(env) -> None:
    """One name rule on every client and backend: nothing reaches the catalog or the object folder."""
    objects = sorted(p for p in env.objects.rglob("*") if p.is_file())
    creates = {
        label: (lambda case=case: env.client.create_model(case[0], case[1], {}, case[2]))
        for label, case in BAD_IMPORTS.items()
    }
    expect_each(InvalidInput, creates)
    before = env.history()
    commits = {
        "tensor name with a space": lambda: env.client.commit(env.model, {"new tensor": full(torch.ones(1))}),
        "over-long tensor name": lambda: env.client.commit(env.model, {"t" * 401: full(torch.ones(1))}),
        "over-long branch name": lambda: env.client.branch(env.model, "b" * 201, "main"),
        "non-ASCII tag": lambda: env.client.tag(env.model, "tag²", "main"),
    }
    expect_each(InvalidInput, commits)
    assert [m.name for m in env.client.models()] == [env.model]
    assert env.history() == before
    assert sorted(p for p in env.objects.rglob("*") if p.is_file()) == objects


def test_deltas_that_add_up_to_inf_are_refused(env) -> None:
    """Each delta is finite; their sum is not. The result is checked, not only the parts."""
    big = Delta(Kind.DENSE, {"diff": torch.full((64,), 3e38)})
    v2 = env.client.commit(env.model, {NORM: big})
    with pytest.raises(InvalidDelta, match="NaN or Inf"):
        env.client.commit(env.model, {NORM: big}, "main", v2.id)
    assert env.head() == v2.id
    assert bool(torch.isfinite(env.client.fetch(env.model, names=[NORM])[NORM]).all())


def test_a_shape_change_needs_the_commit_to_say_so(env) -> None:
    """Typed full entries and full values follow one rule: no silent change of a tensor's shape."""
    with pytest.raises(InvalidDelta, match="changes_architecture"):
        env.client.commit(env.model, {NORM: full(torch.ones(7, 3))})
    with pytest.raises(InvalidDelta):
        env.client.commit_full(env.model, {NORM: torch.ones(7, 3)})
    info = CommitInfo(metadata={"changes_architecture": True})
    env.client.commit(env.model, {NORM: full(torch.ones(7, 3))}, info=info)
    env.client.commit_full(env.model, {NORM: torch.ones(5)}, info=info)
    assert env.client.fetch(env.model, names=[NORM])[NORM].shape == (5,)
