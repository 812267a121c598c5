"""What a store user relies on, run against every client and backend (see conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from llmk.domain.deltas import Delta, Kind, full
from llmk.domain.versions import CommitInfo
from llmk.errors import AlreadyExists, Frozen, InvalidInput, NotFound
from tests.contract.store.contract_support import (
    DOWN1,
    EMBED,
    K1,
    NORM,
    Q0,
    UP0,
    assert_same_tensors,
    rows,
    same_bits,
    sparse,
)


def test_import_then_export_is_bit_exact(env, tmp_path) -> None:
    out = tmp_path / "export.safetensors"
    assert env.client.export(env.model, None, out) == len(env.tensors)
    assert_same_tensors(load_file(str(out)), env.tensors)
    with safe_open(str(out), framework="pt") as f:
        assert f.metadata() == {"model": env.model, "version": str(env.first)}
    assert_same_tensors(env.client.fetch(env.model, str(env.first)), env.tensors)
    model = env.client.model(env.model)
    assert model.config["hidden_size"] == 64
    assert "config.json" in model.files
    assert b'"hidden_size": 64' in env.client.file(env.model, "config.json")
    assert [(r.name, r.kind, r.version) for r in env.client.refs(env.model)] == [
        ("main", "branch", env.first)
    ]
    v = env.client.version(env.model)
    assert v.id == env.first
    assert v.parent is None
    assert v.message == "import"
    assert {e.name for e in v.entries} == set(env.tensors)
    assert {e.kind for e in v.entries} == {"full"}
    assert v.created_at.tzinfo is not None, "timestamps are timezone-aware UTC on every backend"
    assert abs(datetime.now(UTC) - v.created_at) < timedelta(minutes=5)


def test_every_delta_kind_materializes_to_the_dense_reference(env) -> None:
    g = torch.Generator().manual_seed(1)
    base = env.tensors
    idx = torch.randperm(UP0_NUMEL, generator=g)[:80]
    values = torch.randn(80, generator=g)
    embed_rows, row_values = [0, 5, 49151], torch.randn(3, 64, generator=g)
    a, b = torch.randn(64, 2, generator=g), torch.randn(2, 64, generator=g)
    diff = torch.randn(64, generator=g)
    entries = {
        UP0: Delta(Kind.SPARSE, {"indices": idx, "values": values}),
        EMBED: rows(embed_rows, row_values),
        Q0: Delta(Kind.LOW_RANK, {"a": a, "b": b}),
        NORM: Delta(Kind.DENSE, {"diff": diff}),
    }
    v = env.client.commit(env.model, entries, "main", env.first, CommitInfo(author="t", message="kinds"))

    up_diff = torch.zeros(UP0_NUMEL)
    up_diff[idx] = values
    embed_diff = torch.zeros_like(base[EMBED])
    embed_diff[embed_rows] = row_values
    expected = dict(base)
    expected[UP0] = base[UP0] + up_diff.view(128, 64)
    expected[EMBED] = base[EMBED] + embed_diff
    expected[Q0] = base[Q0] + a @ b
    expected[NORM] = base[NORM] + diff
    assert_same_tensors(env.client.fetch(env.model), expected)

    assert (v.parent, v.basis, v.author, v.message) == (env.first, env.first, "t", "kinds")
    kinds = {e.name: (e.kind, e.nnz) for e in v.entries}
    assert kinds == {UP0: ("sparse", 80), EMBED: ("rows", 192), Q0: ("low_rank", 4096), NORM: ("dense", 64)}

    # replacement kinds on top; the first commit stays readable as it was
    entries2 = {
        UP0: sparse([1, 2], [7.0, -7.0], Kind.SPARSE_SET),
        DOWN1: rows([63], torch.full((1, 128), 0.5), Kind.ROWS_SET),
    }
    v2 = env.client.commit(env.model, entries2, "main", v.id)
    expected2 = dict(expected)
    expected2[UP0] = expected[UP0].clone()
    expected2[UP0].view(-1)[[1, 2]] = torch.tensor([7.0, -7.0])
    expected2[DOWN1] = base[DOWN1].clone()
    expected2[DOWN1][63] = 0.5
    assert_same_tensors(env.client.fetch(env.model, str(v2.id)), expected2)
    assert_same_tensors(env.client.fetch(env.model, str(v.id)), expected)
    assert_same_tensors(env.client.fetch(env.model, str(env.first)), base)
    assert [x.id for x in env.client.log(env.model)] == [v2.id, v.id, env.first]


UP0_NUMEL = 128 * 64


def deep_model(env) -> dict[str, torch.Tensor]:
    """Twelve layers, so that a prefix for layer 1 has layers 10 and 11 to wrongly match."""
    g = torch.Generator().manual_seed(3)
    tensors = {"model.norm.weight": torch.ones(4)}
    for i in range(12):
        for part in ("mlp.up_proj.weight", "self_attn.q_proj.weight"):
            tensors[f"model.layers.{i}.{part}"] = torch.randn(4, 4, generator=g)
    env.client.create_model("deep", tensors, {"num_hidden_layers": 12}, {})
    return tensors


def test_prefix_and_glob_filters(env, tmp_path) -> None:
    tensors = deep_model(env)
    layer1 = {n: t for n, t in tensors.items() if n.startswith("model.layers.1.")}
    assert len(layer1) == 2
    assert_same_tensors(env.client.fetch("deep", selector="model.layers.1"), layer1)
    assert_same_tensors(env.client.fetch("deep", selector="model.layers.1."), layer1)
    glob = env.client.fetch("deep", selector="model.layers.1*")
    assert sorted({n.split(".")[2] for n in glob}) == ["1", "10", "11"]
    mlp = env.client.fetch("deep", selector="*.mlp.*")
    assert len(mlp) == 12
    assert all(".mlp." in n for n in mlp)
    exact = ["model.layers.10.mlp.up_proj.weight", "model.norm.weight"]
    assert_same_tensors(env.client.fetch("deep", names=exact), {n: tensors[n] for n in exact})
    both = env.client.fetch("deep", selector="model.layers.1", names=exact)
    assert both == {}
    assert env.client.fetch("deep", selector="model.layers.12") == {}
    out = tmp_path / "layer1.safetensors"
    assert env.client.export("deep", None, out, "model.layers.1") == 2
    assert_same_tensors(load_file(str(out)), layer1)
    with pytest.raises(NotFound):
        env.client.export("deep", None, tmp_path / "none.safetensors", "model.layers.99")
    assert not (tmp_path / "none.safetensors").exists()

    env.client.freeze("deep", ["model.layers.1"])
    v = env.client.commit("deep", {"model.layers.10.mlp.up_proj.weight": full(torch.zeros(4, 4))})
    assert [e.name for e in v.entries] == ["model.layers.10.mlp.up_proj.weight"]
    with pytest.raises(Frozen):
        env.client.commit("deep", {"model.layers.1.mlp.up_proj.weight": full(torch.zeros(4, 4))})


def test_commit_full_keeps_the_cheapest_exact_encoding(env, tmp_path) -> None:
    new = {n: t.clone() for n, t in env.tensors.items()}
    new[UP0].view(-1)[torch.arange(0, UP0_NUMEL, 100)] += 0.25  # ~1%: values with indices
    new[EMBED][7] *= 2  # one whole row
    new[Q0] = torch.randn(64, 64)  # everything
    new[NORM][3] = 0.0
    v = env.client.commit_full(env.model, new, "main", env.first)
    kinds = {e.name: (e.kind, e.nnz) for e in v.entries}
    assert kinds == {
        UP0: ("sparse_set", 82),
        EMBED: ("rows_set", 64),
        Q0: ("full", 4096),
        NORM: ("sparse_set", 1),
    }, "unchanged tensors get no entry; each change its cheapest exact form"
    sizes = {e.name: e.nbytes for e in v.entries}
    assert sizes[UP0] == 82 * 8
    assert sizes[EMBED] == 4 + 64 * 4
    assert sizes[NORM] == 8
    out = tmp_path / "v.safetensors"
    env.client.export(env.model, str(v.id), out)
    assert_same_tensors(load_file(str(out)), new)

    # +0.0 -> -0.0 is a change no float comparison sees; it must survive bit for bit
    signed = {NORM: new[NORM].clone()}
    signed[NORM][3] = -0.0
    v2 = env.client.commit_full(env.model, signed, "main", v.id)
    assert [(e.name, e.kind, e.nnz) for e in v2.entries] == [(NORM, "sparse_set", 1)]
    fetched = env.client.fetch(env.model, names=[NORM])[NORM]
    assert same_bits(fetched, signed[NORM])
    assert torch.signbit(fetched[3])

    before = env.history()
    with pytest.raises(InvalidInput, match="nothing changed"):
        env.client.commit_full(env.model, signed, "main", v2.id)
    assert env.history() == before


def test_diff_lists_changed_tensors_with_kind_nnz_and_norm(env) -> None:
    v2 = env.client.commit(env.model, {UP0: sparse([3, 9, 11], [0.5, -0.5, 2.0])}, "main", env.first)
    v3 = env.client.commit(env.model, {EMBED: rows([2], torch.ones(1, 64))}, "main", v2.id)
    v4 = env.client.commit(env.model, {UP0: sparse([3], [1.0], Kind.SPARSE_SET)}, "main", v3.id)

    changes = {c.name: c for c in env.client.diff(env.model, str(env.first), str(v2.id))}
    assert list(changes) == [UP0]
    c = changes[UP0]
    old, new = env.tensors[UP0], env.client.fetch(env.model, str(v2.id), names=[UP0])[UP0]
    assert (c.kind, c.nnz, c.shape) == ("sparse", 3, (128, 64))
    assert c.norm == pytest.approx(float((new.double() - old.double()).norm()))

    changes = {c.name: c for c in env.client.diff(env.model, str(v2.id), str(v4.id))}
    assert {n: (c.kind, c.nnz) for n, c in changes.items()} == {UP0: ("sparse_set", 1), EMBED: ("rows", 64)}
    assert changes[EMBED].norm == pytest.approx(8.0)  # 64 values, each +1

    changes = {c.name: c for c in env.client.diff(env.model, str(env.first), "main")}
    assert changes[UP0].kind == "mixed"
    assert changes[UP0].nnz == 3
    assert env.client.diff(env.model, "main", str(v4.id)) == []


def test_branch_tag_and_rollback_only_add_history(env) -> None:
    first = env.first
    env.client.tag(env.model, "base", str(first))
    v2 = env.client.commit(env.model, {NORM: Delta(Kind.DENSE, {"diff": torch.ones(64)})})
    exp = env.client.branch(env.model, "exp", "main")
    assert (exp.kind, exp.version) == ("branch", v2.id)
    v3 = env.client.commit(env.model, {K1: sparse([0], [1.0])}, "exp", v2.id)
    assert env.head("main") == v2.id
    assert env.head("exp") == v3.id
    assert env.client.version(env.model, "base").id == first

    rb = env.client.rollback(env.model, "base")
    assert rb.id not in (first, v2.id, v3.id)
    assert (rb.parent, rb.basis, rb.metadata.get("rollback_to")) == (v2.id, first, first)
    assert env.head("main") == rb.id
    assert [v.id for v in env.client.log(env.model)] == [rb.id, v2.id, first]
    assert [v.id for v in env.client.log(env.model, "main", limit=2)] == [rb.id, v2.id]
    assert [(c.name, c.nnz) for c in env.client.diff(env.model, str(v2.id), "main")] == [(NORM, 64)]
    assert_same_tensors(env.client.fetch(env.model), env.tensors)
    v2_values = env.client.fetch(env.model, str(v2.id))
    assert torch.equal(v2_values[NORM], env.tensors[NORM] + 1)  # nothing was deleted
    assert env.client.fetch(env.model, "exp")[K1][0, 0] == env.tensors[K1][0, 0] + 1

    v5 = env.client.commit(env.model, {UP0: sparse([0], [1.0])}, "main", rb.id)
    after = env.client.fetch(env.model)
    assert torch.equal(after[NORM], env.tensors[NORM])
    assert after[UP0][0, 0] == env.tensors[UP0][0, 0] + 1
    assert v5.basis == rb.id
    refs = {r.name: (r.kind, r.version) for r in env.client.refs(env.model)}
    assert refs == {"main": ("branch", v5.id), "exp": ("branch", v3.id), "base": ("tag", first)}

    before = env.history()
    with pytest.raises(InvalidInput, match="tag"):
        env.client.commit(env.model, {NORM: full(torch.zeros(64))}, "base")
    with pytest.raises(AlreadyExists):
        env.client.branch(env.model, "exp", str(first))
    with pytest.raises(AlreadyExists):
        env.client.tag(env.model, "main", str(first))
    with pytest.raises(InvalidInput):
        env.client.branch(env.model, "123", "main")
    assert env.history() == before


def test_freeze_rejects_a_touching_commit_whole(env) -> None:
    model = env.client.freeze(env.model, ["model.layers.1.mlp", "*.q_proj.*"])
    assert model.frozen == ["*.q_proj.*", "model.layers.1.mlp"]
    assert env.client.model(env.model).frozen == model.frozen
    before, values = env.history(), env.client.fetch(env.model)
    touching = {UP0: sparse([0], [1.0]), DOWN1: sparse([0], [1.0]), Q0: sparse([0], [1.0])}
    with pytest.raises(Frozen) as caught:
        env.client.commit(env.model, touching)
    assert DOWN1 in str(caught.value)
    assert Q0 in str(caught.value)
    assert UP0 not in str(caught.value)
    new = {n: t.clone() for n, t in values.items()}
    new[DOWN1] += 1
    new[UP0] += 1
    with pytest.raises(Frozen, match=DOWN1):
        env.client.commit_full(env.model, new)
    assert env.history() == before
    assert_same_tensors(env.client.fetch(env.model), values)

    unchanged_frozen = {UP0: new[UP0], DOWN1: values[DOWN1]}  # frozen but equal: not a change
    v = env.client.commit_full(env.model, unchanged_frozen)
    assert [e.name for e in v.entries] == [UP0]


def test_frozen_tensors_survive_a_rollback_unless_it_is_forced(env) -> None:
    v2 = env.client.commit(env.model, {UP0: sparse([0], [1.0]), Q0: sparse([0], [1.0])})
    env.client.freeze(env.model, ["model.layers.0.mlp"])
    before, values = env.history(), env.client.fetch(env.model)
    with pytest.raises(Frozen, match=UP0):
        env.client.rollback(env.model, str(env.first))
    assert env.history() == before
    env.client.commit(env.model, {K1: sparse([0], [1.0])})
    env.client.rollback(env.model, str(v2.id))  # the frozen tensor is equal in both: allowed
    assert_same_tensors(env.client.fetch(env.model), values)
    forced = env.client.rollback(env.model, str(env.first), force_frozen=True)
    assert forced.metadata["forced_frozen"] == [UP0]
    assert_same_tensors(env.client.fetch(env.model), env.tensors)


def test_freeze_needs_a_matching_tensor_and_unfreeze_undoes_it(env) -> None:
    with pytest.raises(InvalidInput, match="match no tensor"):
        env.client.freeze(env.model, ["model.layers.0.mlp", "model.layers.99"])
    assert env.client.model(env.model).frozen == []
    env.client.freeze(env.model, ["model.layers.0.mlp", "*.q_proj.*"])
    with pytest.raises(InvalidInput, match="not frozen"):
        env.client.unfreeze(env.model, ["model.layers.0"])
    assert env.client.unfreeze(env.model, ["model.layers.0.mlp"]).frozen == ["*.q_proj.*"]
    v = env.client.commit(env.model, {UP0: sparse([0], [1.0])})
    assert [e.name for e in v.entries] == [UP0]
    with pytest.raises(Frozen):
        env.client.commit(env.model, {Q0: sparse([0], [1.0])})
    with pytest.raises(InvalidInput):
        env.client.rollback(env.model, "")  # not "roll back to head"


def test_squash_writes_a_bit_identical_base(env) -> None:
    env.client.commit(env.model, {UP0: sparse([1], [1.0])})
    env.client.commit(env.model, {Q0: Delta(Kind.LOW_RANK, {"a": torch.ones(64, 1), "b": torch.ones(1, 64)})})
    head = env.head()
    env.client.tag(env.model, "before", str(head))
    values = env.client.fetch(env.model)
    sq = env.client.squash(env.model)
    assert (sq.parent, sq.basis, sq.metadata.get("squashed")) == (head, None, head)
    stored = env.client.version(env.model, str(sq.id))
    assert {e.kind for e in stored.entries} == {"full"}
    assert len(stored.entries) == len(values)
    assert env.head() == sq.id
    assert_same_tensors(env.client.fetch(env.model), values)
    assert_same_tensors(env.client.fetch(env.model, "before"), values)

    from_tag = env.client.squash(env.model, "before")
    assert env.head() == sq.id, "squashing a tag leaves main alone"
    refs = {r.name: r.version for r in env.client.refs(env.model)}
    assert refs[f"squash-{head}"] == from_tag.id
    assert_same_tensors(env.client.fetch(env.model, str(from_tag.id)), values)


def test_stats_compare_stored_bytes_with_full_copies(env) -> None:
    full_bytes = sum(t.numel() * t.element_size() for t in env.tensors.values())
    v2 = env.client.commit(env.model, {UP0: sparse([1, 2, 3], [1.0, 1.0, 1.0])})
    rb = env.client.rollback(env.model, str(env.first))
    stats = {s.version: s for s in env.client.stats(env.model)}
    assert sorted(stats) == [env.first, v2.id, rb.id]
    assert all(s.full_bytes == full_bytes for s in stats.values())
    assert full_bytes <= stats[env.first].stored_bytes < full_bytes * 1.01
    assert 0 < stats[v2.id].stored_bytes < 1024
    assert stats[rb.id].stored_bytes == 0


def test_idempotency_key_returns_the_first_version(env) -> None:
    info = CommitInfo(message="once", idempotency_key="job-42/step-7")
    v = env.client.commit(env.model, {UP0: sparse([0], [1.0])}, "main", env.first, info)
    history = env.history()
    again = env.client.commit(env.model, {UP0: sparse([0], [5.0])}, "main", env.first, info)
    assert again.id == v.id
    assert env.history() == history
    assert env.client.fetch(env.model, names=[UP0])[UP0][0, 0] == env.tensors[UP0][0, 0] + 1
    assert env.client.version(env.model).idempotency_key == "job-42/step-7"
    other = env.client.commit(
        env.model, {UP0: sparse([0], [1.0])}, "main", v.id, CommitInfo(idempotency_key="b")
    )
    assert other.id != v.id


def test_long_chains_are_served_from_a_cached_materialization(make_env) -> None:
    env = make_env(cache_chain_length=3)
    expected = {n: t.clone() for n, t in env.tensors.items()}
    head = env.first
    for i in range(7):
        head = env.client.commit(env.model, {UP0: sparse([i], [0.5])}, "main", head).id
        expected[UP0].view(-1)[i] += 0.5
    assert env.inspect.catalog.chain(env.model, head)[1] is None, "no snapshot before a read"
    assert_same_tensors(env.client.fetch(env.model), expected)
    chain, snapshot = env.inspect.catalog.chain(env.model, head)
    assert snapshot is not None
    assert chain == []
    assert_same_tensors(env.client.fetch(env.model), expected)
    assert_same_tensors(
        env.client.fetch(env.model, selector="model.layers.0.mlp"),
        {n: t for n, t in expected.items() if n.startswith("model.layers.0.mlp.")},
    )
    for i in range(4):
        head = env.client.commit(env.model, {UP0: sparse([100 + i], [1.0])}, "main", head).id
        expected[UP0].view(-1)[100 + i] += 1.0
    assert_same_tensors(env.client.fetch(env.model), expected)
    changes = env.client.diff(env.model, str(env.first), "main")
    assert [(c.name, c.nnz) for c in changes] == [(UP0, 11)]


def test_models_lists_every_model_with_its_refs(env) -> None:
    deep_model(env)
    assert [m.name for m in env.client.models()] == ["deep", env.model]
