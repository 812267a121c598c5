"""Recommendations through the queue in the embedded mode: the in-process broker and a rec worker on this
process's threads, as `llmk rec recommend --queue` runs without RabbitMQ."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmk.bootstrap import Deployment
from llmk.errors import InvalidInput
from services.rec.interface import Interaction, RecConfig
from services.rec.usecases import recommender
from services.rec.usecases.training import TrainSpec
from tests.conftest import make_settings


def test_the_embedded_queue_answers_like_the_model_in_process(tmp_path: Path) -> None:
    tiers = Deployment(make_settings(tmp_path / "home"))
    store = tiers.local_store()
    rows = [Interaction(u, (u + j) % 12, 5.0, 100 * u + j) for u in range(8) for j in range(4)]
    config = RecConfig(dim=4, max_users=16, max_items=16)
    recommender.create(store, "m", rows, {}, config, TrainSpec(epochs=5, batch_size=16))
    app = tiers.rec_queue()
    with tiers.rec_workers(app, "m", None):
        client = tiers.rec("m", queued=True)
        answer = client.recommend(3, k=4, exclude=frozenset({3}))
        assert answer == recommender.serve(store, "m").recommend(3, 4, frozenset({3}))
        assert answer.version == 1
        with pytest.raises(InvalidInput, match="k must be between"):
            client.recommend(3, k=0)
    with pytest.raises(InvalidInput, match="drop --ref"):
        tiers.rec("m", "1", queued=True)
