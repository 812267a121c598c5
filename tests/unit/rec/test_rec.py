"""The recommender tier over a real in-process store (SQLite + object files): tables as stored tensors,
growth into spare rows, online row versions, accounting of every interaction, serving and replay."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from llmk.domain.deltas import Delta, Kind
from llmk.errors import InvalidInput, NotFound
from services.rec.interface import Interaction, RecConfig, Rejection
from services.rec.usecases import evaluation as ev
from services.rec.usecases import recommender
from services.rec.usecases.model import ITEM_EMBEDDING, ITEM_IDS, USER_EMBEDDING, USER_IDS, TableFull, Tables
from services.rec.usecases.records import read_interactions
from services.rec.usecases.replay import ReplaySpec, replay
from services.rec.usecases.streaming import CommitPolicy, Streamer
from services.rec.usecases.training import TrainSpec, fit
from services.store.usecases.store import Store
from tests.conftest import make_settings

CONFIG = RecConfig(dim=8, max_users=40, max_items=50, negatives=4, lr=0.1, seed=3)
SPEC = TrainSpec(epochs=30, batch_size=64, lr=0.05)


def clustered(users: range, t0: int = 1000, seed: int = 0) -> list[Interaction]:
    """Users below 15 like items 0-19, the others items 20-39; each rates 8 items of their side."""
    rng = random.Random(seed)
    out = []
    for n, user in enumerate(users):
        side = 0 if user < 15 else 20
        for j, item in enumerate(rng.sample(range(side, side + 20), 8)):
            out.append(Interaction(user, item, 5.0, t0 + 10 * n + j))
    return sorted(out, key=lambda r: r.timestamp)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    from llmk.bootstrap import Deployment

    s = Deployment(make_settings(tmp_path / "home")).local_store()
    yield s
    s.catalog.engine.dispose()


@pytest.fixture
def model(store: Store) -> str:
    recommender.create(store, "rec", clustered(range(30)), {1: "One", 25: "Twenty-five"}, CONFIG, SPEC)
    return "rec"


def streamer(store: Store, every: int = 0) -> Streamer:
    tables, head = recommender.load(store, "rec")
    return Streamer(store, "rec", "main", head, tables, CommitPolicy(every=every))


def test_tables_are_stored_tensors_with_an_exact_id_map(store: Store, model: str) -> None:
    tensors = store.fetch(model)
    assert tensors[USER_EMBEDDING].shape == (40, 8)
    assert tensors[ITEM_EMBEDDING].shape == (50, 8)
    users = tensors[USER_IDS].tolist()
    assert sorted(users[:30]) == list(range(30))
    assert users[30:] == [-1] * 10
    assert sorted(tensors[ITEM_IDS][:40].tolist()) == list(range(40))
    assert store.model(model).config["kind"] == "rec"


def test_training_is_deterministic_under_a_seed() -> None:
    a, b = fit(clustered(range(30)), CONFIG, SPEC), fit(clustered(range(30)), CONFIG, SPEC)
    assert all(torch.equal(a.t[n], b.t[n]) for n in a.t)


def test_recommend_ranks_the_users_side_and_names_the_version(store: Store, model: str) -> None:
    served = recommender.serve(store, model)
    answer = served.recommend(3, k=5, exclude=frozenset(range(10)))
    assert answer.version == store.head(model)
    assert not answer.popular
    assert all(10 <= s.item < 20 for s in answer.items)
    assert recommender.serve(store, model).recommend(25, k=3).items[0].item >= 20


def test_unknown_user_gets_popular_items_and_says_so(store: Store, model: str) -> None:
    answer = recommender.serve(store, model).recommend(999, k=3)
    assert answer.popular
    assert len(answer.items) == 3
    with pytest.raises(InvalidInput, match="k must be"):
        recommender.serve(store, model).recommend(1, k=0)


def test_stream_commits_only_changed_rows_and_appends_new_ids(store: Store, model: str) -> None:
    s = streamer(store)
    sent: dict[str, Delta] = {}
    s.on_commit = lambda version, entries: sent.update(entries)
    s.offer(Interaction(100, 45, 5.0, 5000))  # a new user and a new item
    version = s.commit()
    assert version is not None
    entries = {e.name: e for e in store.version(model, str(version.id)).entries}
    assert {e.kind for e in entries.values()} == {Kind.ROWS_SET.value}
    assert entries[USER_IDS].nnz == 1
    assert entries[ITEM_IDS].nnz == 1
    assert entries[ITEM_EMBEDDING].nnz <= (1 + CONFIG.online_negatives) * CONFIG.dim
    tensors = store.fetch(model)
    assert tensors[USER_IDS][30] == 100
    assert tensors[ITEM_IDS][40] == 45
    row_ids = sum(d.parts["rows"].numel() for d in sent.values())
    assert s.summary.version_bytes[0] == s.summary.touched_bytes[0] + 4 * row_ids  # the rows and their ids


def test_stream_rejects_bad_records_with_reasons_and_counts_every_one(store: Store, model: str) -> None:
    s = streamer(store)
    lines = [
        "user,item,rating,timestamp",
        "1,2,5,6000",
        "1,2,5,6000",  # duplicate
        "1,3,9,6001",  # rating out of range
        "1,x,4,6002",  # malformed
        "1,4,4,10",  # timestamp backwards
        "1,5",  # malformed: too few columns
    ]
    summary = s.consume(read_interactions(lines, "csv"))
    assert summary.read == 6
    assert summary.applied == 1
    assert summary.read == summary.applied + summary.rejected
    assert summary.reasons == {
        "duplicate": 1,
        "rating_out_of_range": 1,
        "malformed": 2,
        "timestamp_backwards": 1,
    }


def test_a_later_stream_refuses_what_an_earlier_one_applied(store: Store, model: str) -> None:
    first = streamer(store)
    first.consume([Interaction(1, 2, 5.0, 7000)])
    again = streamer(store).consume([Interaction(1, 2, 5.0, 7000), Interaction(1, 3, 5.0, 6999)])
    assert again.reasons == {"duplicate": 1, "timestamp_backwards": 1}
    assert not again.versions


def test_a_full_table_refuses_new_ids_whole_and_writes_nothing(store: Store, model: str) -> None:
    s = streamer(store)
    records = [Interaction(200 + n, 1, 5.0, 8000 + n) for n in range(11)]  # 10 spare user rows
    summary = s.consume(records)
    assert summary.applied == 10
    assert summary.reasons == {"table_full": 1}
    assert "user table is full" in summary.rejections[0].reason
    items_before = len(s.tables.items)
    s.offer(Interaction(300, 49, 5.0, 9000))  # a new item with a refused new user: neither is taken
    assert len(s.tables.items) == items_before
    with pytest.raises(TableFull):
        s.tables.user_row(301)


def test_hot_applied_rows_equal_the_stored_version(store: Store, model: str) -> None:
    served = recommender.serve(store, model)
    s = streamer(store)
    s.on_commit = lambda version, entries: served.apply(version.id, entries)
    s.consume(clustered(range(30, 36), t0=9000, seed=1))
    assert served.version == store.head(model)
    stored = store.fetch(model)
    assert all(torch.equal(served.t[n], stored[n]) for n in stored)


def test_online_learning_serves_a_new_user_their_side(store: Store, model: str) -> None:
    served = recommender.serve(store, model)
    s = streamer(store, every=1)
    s.on_commit = lambda version, entries: served.apply(version.id, entries)
    s.consume(Interaction(500, item, 5.0, 9500 + item) for item in range(20, 32))
    answer = served.recommend(500, k=5, exclude=frozenset(range(20, 32)))
    assert not answer.popular
    assert sum(s.item >= 20 for s in answer.items) >= 4


def test_rollback_and_diff_see_the_streamed_rows(store: Store, model: str) -> None:
    first = store.head(model)
    streamer(store).consume([Interaction(1, 2, 5.0, 9999)])
    assert USER_EMBEDDING in {c.name for c in store.diff(model, str(first), "main")}
    store.rollback(model, str(first))
    assert torch.equal(store.fetch(model)[USER_EMBEDDING], store.fetch(model, str(first))[USER_EMBEDDING])


def test_records_parse_json_lines_and_movielens_headers() -> None:
    found = list(
        read_interactions(['{"user": 1, "item": 2, "rating": 4.5, "timestamp": 3}', "[1]", "{"], "jsonl")
    )
    assert found[0] == Interaction(1, 2, 4.5, 3)
    assert all(isinstance(r, Rejection) for r in found[1:])
    assert list(read_interactions(["userId,movieId,rating,timestamp", "1,2,4,3"], "csv")) == [
        found[0].__class__(1, 2, 4.0, 3)
    ]
    with pytest.raises(InvalidInput, match="header lacks"):
        list(read_interactions(["a,b", "1,2"], "csv"))
    assert isinstance(next(read_interactions(["user,item,rating,timestamp", "-1,2,4,3"], "csv")), Rejection)


def test_prequential_scores_rank_and_replay_leaves_main_alone(store: Store, model: str) -> None:
    score = ev.Score()
    score.add(1, [5, 6, 7], 6, k=10)
    score.add(2, [5, 6, 7], 9, k=10)
    assert score.as_dict(10)["recall_at_10"] == 0.5
    assert abs(score.as_dict(10)["ndcg_at_10"] - 0.31546) < 1e-4
    head = store.head(model)
    later = clustered(range(30, 38), t0=20000, seed=2)
    result = replay(store, model, None, clustered(range(30)), later, ReplaySpec(every=8, baselines=True))
    assert store.head(model) == head
    assert result["versions"] >= 1
    assert set(result["systems"]) == {"online", "popular", "als_daily"}
    assert result["systems"]["online"]["ndcg_at_10"] > result["systems"]["popular"]["ndcg_at_10"]
    assert result["bytes_per_version"] < result["full_copy_bytes"]


def test_loading_a_model_that_is_no_recommender_is_refused(store: Store) -> None:
    store.create_model("plain", {"w": torch.zeros(2)}, {}, {})
    with pytest.raises(InvalidInput, match="not a recommender"):
        recommender.load(store, "plain")
    with pytest.raises(NotFound):
        recommender.load(store, "missing")
    with pytest.raises(InvalidInput, match="lacks tensors"):
        Tables({"w": torch.zeros(2)}, CONFIG)


def test_the_online_steps_closed_form_gradients_equal_autograds() -> None:
    from services.rec.usecases.training import bpr_gradients, bpr_row_gradients

    generator = torch.Generator().manual_seed(3)
    user, items, bias = (torch.randn(*s, generator=generator) for s in ((1, 8), (5, 8), (5,)))
    params = {"user": user, "item": items, "bias": bias}
    negatives = torch.arange(1, 5)[None, :]
    expected = bpr_gradients(params, torch.tensor([0]), torch.tensor([0]), negatives, 1e-3)
    found = bpr_row_gradients(user, items, bias, 1e-3)
    for name in ("user", "item", "bias"):
        torch.testing.assert_close(found[name], expected[name])


def test_a_replayed_version_answers_only_after_its_served_delay_on_the_ratings_clock(
    store: Store, model: str
) -> None:
    """The replay serves a committed version `served_after` seconds of the ratings' clock later, as a
    deployment with that interaction-to-served time would: never sooner."""
    served = recommender.serve(store, model)
    first = served.version
    llmk = ev.Llmk(served, served_after=10.0)
    tables, head = recommender.load(store, model)
    policy = CommitPolicy(every_seconds=1.0)
    llmk.streamer = Streamer(store, model, "main", head, tables, policy, llmk.publish, clock=llmk.clock)
    llmk.at(5000)
    llmk.learn(Interaction(3, 25, 5.0, 5000))  # the clock moved from 0: committed at once
    committed = llmk.streamer.head.id
    assert committed != first
    llmk.at(5009)
    assert served.version == first
    llmk.at(5010)
    assert served.version == committed


def test_replay_refuses_a_cadence_or_delay_it_cannot_run(store: Store, model: str) -> None:
    with pytest.raises(InvalidInput, match="needs a version every"):
        ReplaySpec(every=0, every_seconds=0)
    with pytest.raises(InvalidInput, match="must be >= 0"):
        ReplaySpec(served_after=-1)
    assert ReplaySpec(online=False, every=0, every_seconds=0).online is False


def test_daily_als_retrains_before_a_new_days_first_interaction_is_served() -> None:
    day = ev.DAY
    history = clustered(range(30), t0=day * 10)
    als = ev.DailyAls(history, 4.0, factors=4, seed=0)
    assert als.retrains == 1
    als.at(day * 10 + 500)  # the history's last day: no retrain
    als.learn(Interaction(99, 3, 5.0, day * 10 + 500))
    assert als.retrains == 1
    assert als.recommend(99, 5, frozenset()) == als.popular.recommend(99, 5, frozenset())
    als.at(day * 11 + 1)
    assert als.retrains == 2
    assert 3 not in als.recommend(99, 5, frozenset({3}))
    assert als._recommend(99, 5, frozenset()) is not None  # trained on user 99's positive now


def test_an_item_the_stream_appends_is_answered_with_its_id_and_catalog_title(store: Store) -> None:
    catalog = {1: "One", 45: "Forty-five (1999)"}  # 45: in the catalog, rated by nobody in training
    recommender.create(store, "named", clustered(range(30)), catalog, CONFIG, SPEC)
    tables, head = recommender.load(store, "named")
    s = Streamer(store, "named", "main", head, tables, CommitPolicy())
    for n, user in enumerate(range(15)):  # the first side's users all like 45
        s.offer(Interaction(user, 45, 5.0, 5000 + n))
    s.commit()
    served = recommender.serve(store, "named")
    answer = served.recommend(200, k=50)  # unknown user: every item by popularity, 45 first
    assert (answer.items[0].item, answer.items[0].title) == (45, "Forty-five (1999)")
    assert {x.item: x.title for x in served.recommend(3, k=50).items}[45] == "Forty-five (1999)"
