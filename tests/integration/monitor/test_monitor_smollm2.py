"""The monitor on the real SmolLM2: a crafted stream opens a negative alert for its ticker, explained by
the words that drove each label, and clears it when the news turns; and the explanations are faithful:
removing a text's top 20% words by attribution lowers its label's probability more than removing as many
random words, on at least 80% of texts."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from llmk.bootstrap import Deployment
from llmk.data import FINANCE_NEWS
from llmk.domain.task_spec import TaskSpec, set_task
from llmk.domain.versions import CommitInfo
from llmk.platform.database import make_engine
from services.inference.usecases.host import Host
from services.monitor.adapters.tables import MonitorDb
from services.monitor.usecases.alerts import AlertRules
from services.monitor.usecases.explain import explain, without
from services.monitor.usecases.items import Item
from services.monitor.usecases.monitor import Monitor, MonitorConfig
from services.store.adapters.importers import load_source
from tests.unit.monitor.answers import Answered

pytestmark = [pytest.mark.smollm2, pytest.mark.slow, pytest.mark.timeout(900)]
TASK = TaskSpec(
    labels=("negative", "positive"), template="{text}\nThe sentiment of this headline for investors is"
)
BAD = [
    "$ACME shares plunge 40% after fraud probe and CEO resignation",
    "$ACME stock crashes as company slashes guidance and warns of losses",
    "$ACME downgraded to sell; bankruptcy fears mount",
    "$ACME plunges after missing earnings badly, layoffs announced",
]
GOOD = [
    "$ACME shares soar 30% after record profit and raised outlook",
    "$ACME upgraded to strong buy as revenue beats estimates",
    "$ACME rallies to all-time high on blowout quarter",
    "$ACME jumps after announcing big buyback and dividend hike",
]


class HostScoring:
    """The served model in this process, answering as the inference queue does."""

    def __init__(self, host: Host):
        self.host = host

    def submit(self, texts: Sequence[str]) -> Answered:
        answer = self.host.classify(list(texts))
        return Answered({"version": answer.version, "results": [asdict(r) for r in answer.results]})


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, Path]]:
    from tests.unit.inference.hosting import settings_for

    home = tmp_path_factory.mktemp("smol") / "home"
    settings = settings_for(home, max_context_tokens=256, max_wait_ms=20.0)
    client = Deployment(settings).local_store()
    imported = load_source("smollm2")
    client.create_model("smol", imported.tensors, imported.config, imported.files, CommitInfo())
    set_task(client, "smol", TASK)
    host = Host(settings, client)
    host.load("smol")
    yield host, home
    host.close()


def test_a_ticker_turning_negative_opens_an_explained_alert_that_clears_when_news_turns(
    served: tuple[Host, Path],
) -> None:
    host, home = served
    repo = MonitorDb(make_engine(f"sqlite:///{home / 'llmk.db'}"))
    config = MonitorConfig("smol", AlertRules(window=8, threshold=0.6, min_mentions=3), evidence_items=2)
    monitor = Monitor(repo, HostScoring(host), config, "crafted", on_progress=None)
    texts = BAD + GOOD + GOOD
    summary = monitor.run(Item(f"c{i}", t) for i, t in enumerate(texts))
    assert (summary.read, summary.scored, summary.rejected) == (len(texts), len(texts), 0)
    [alert] = [a for a in repo.alerts("smol", "crafted") if a.direction == "negative"]
    assert alert.ticker == "ACME"
    assert alert.mentions >= 3
    assert alert.cleared is not None
    assert "fell below" in alert.cleared_reason  # the good news took the negative share down
    assert alert.version == host.info().version
    assert len(alert.evidence) == 2
    assert all(e.text in BAD for e in alert.evidence)
    for evidence in alert.evidence:
        assert evidence.label == "negative"
        assert len(evidence.top_tokens) == 5
        assert evidence.top_tokens[0][1] > 0  # the strongest word holds the label up


def test_explanations_are_faithful(served: tuple[Host, Path]) -> None:
    host, _ = served
    scoring = HostScoring(host)

    def classify(texts: Sequence[str]) -> dict[str, Any]:
        return scoring.submit(texts).result()

    with (FINANCE_NEWS / "train.csv").open(newline="") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    texts = [t for t in random.Random(3).sample(rows, 60) if len(t.split()) >= 8][:25]
    rng = random.Random(0)
    better = 0
    for text in texts:
        why = explain(classify, text)
        k = max(1, round(0.2 * len(why.words)))
        top = set(sorted(range(len(why.words)), key=lambda i: -why.attributions[i])[:k])
        chance = set(rng.sample(range(len(why.words)), k))
        answers = classify([without(why.words, top), without(why.words, chance)])["results"]
        drop_top = why.probability - answers[0]["probabilities"][why.label]
        drop_random = why.probability - answers[1]["probabilities"][why.label]
        better += drop_top > drop_random
    assert better >= 0.8 * len(texts), f"top words beat random words on {better} of {len(texts)} texts"
