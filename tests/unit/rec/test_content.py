"""Cold start: an item nobody has rated gets a row placed from the served LLM's reading of its text, so it
can be recommended at once, near the trained items its content resembles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmk.bootstrap import Deployment
from llmk.errors import InvalidInput, NotFound
from services.rec.adapters.files import item_texts
from services.rec.interface import RecConfig
from services.rec.usecases import content, recommender
from services.rec.usecases.training import fit
from tests.unit.inference.hosting import create_tiny, settings_for
from tests.unit.rec.test_rec import CONFIG, SPEC, clustered

COLD = range(40, 50)  # catalog items nobody rated: 40-44 are like items 0-19, 45-49 like items 20-39


def side_content(items: range, seed: int = 0) -> dict[int, torch.Tensor]:
    """Content vectors that say which side an item is on (as genres would), plus noise."""
    g = torch.Generator().manual_seed(seed)
    side = {i: float(i < 20 or 40 <= i < 45) for i in items}
    return {i: torch.tensor([side[i], 1 - side[i]]) + 0.1 * torch.randn(2, generator=g) for i in items}


def test_cold_items_are_placed_near_the_items_their_content_resembles() -> None:
    tables = fit(clustered(range(30)), CONFIG, SPEC)
    placed = content.place_cold_items(tables, side_content(range(50)), list(range(50)))
    assert placed == list(COLD)
    item = {i: tables.items.of[i] for i in COLD}
    emb, bias = tables.t["item.embedding"], tables.t["item.bias"]
    for user, likes in ((3, range(40, 45)), (20, range(45, 50))):
        u = tables.t["user.embedding"][tables.users.of[user]]
        score = {i: float(emb[item[i]] @ u + bias[item[i]]) for i in COLD}
        others = [s for i, s in score.items() if i not in likes]
        assert min(score[i] for i in likes) > max(others), (user, score)


def test_no_room_or_nothing_to_learn_from_is_refused() -> None:
    small = RecConfig(dim=8, max_users=40, max_items=42, seed=3)
    with pytest.raises(InvalidInput, match="do not fit the 2 spare item rows"):
        content.place_cold_items(
            fit(clustered(range(30)), small, SPEC), side_content(range(50)), list(range(50))
        )
    with pytest.raises(InvalidInput, match="at least 2 trained items"):
        content.place_cold_items(fit(clustered(range(30)), CONFIG, SPEC), side_content(COLD), list(COLD))


def test_the_served_llm_computes_content_and_new_items_become_recommendable(tmp_path: Path) -> None:
    movies, tags = tmp_path / "movies.csv", tmp_path / "tags.csv"
    movies.write_text(
        "movieId,title,genres\n"
        + "".join(
            f"{i},Film {i} (2001),{'Comedy' if i < 20 or 40 <= i < 45 else 'Horror|War'}\n" for i in range(50)
        )
    )
    tags.write_text("userId,movieId,tag,timestamp\n1,41,funny,5\n2,41,funny,6\n3,41,late,99999\n")
    texts = item_texts(movies, tags, until=1000)
    assert texts[41] == "Film 41 (2001). Genres: Comedy. Tags: funny."  # the later tag is not read
    assert texts[45] == "Film 45 (2001). Genres: Horror, War."
    deployment = Deployment(settings_for(tmp_path / "home"))
    store = deployment.local_store()
    create_tiny(store, "llm")
    llm = deployment.inference("llm", None)
    try:
        vectors = content.vectors(llm, texts, batch=20)
        again = content.vectors(llm, {41: texts[41]})
    finally:
        llm.close()
    assert set(vectors) == set(range(50))
    assert all(v.shape == (len(content.DESCRIPTORS),) and torch.isfinite(v).all() for v in vectors.values())
    assert torch.allclose(again[41], vectors[41], atol=1e-5)  # computed once is computed the same
    titles = {i: t.split(".")[0] for i, t in texts.items()}
    recommender.create(store, "rec", clustered(range(30)), titles, CONFIG, SPEC, vectors)
    served = recommender.serve(store, "rec")
    assert len(served.recommend(3, k=50).items) == 50  # every catalog item can be recommended
    assert "10 items placed by content" in store.version("rec").message
    with pytest.raises(NotFound):
        item_texts(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("id,name\n1,x\n")
    with pytest.raises(InvalidInput, match="expected MovieLens columns"):
        item_texts(tmp_path / "bad.csv")
