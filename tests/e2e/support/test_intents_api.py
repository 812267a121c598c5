"""POST /v1/intents routes a customer's message by the served model's intent task (banking77's 77
multi-token labels here), naming the version that scored it; a model without a task answers no intent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmk.bootstrap import Deployment
from llmk.domain.task_spec import packaged, set_task
from services.store.adapters.importers import Imported
from tests.e2e.support.conftest import MODEL, Api, api_settings, import_tiny, in_process, serve, stop


@pytest.fixture
def routed(tmp_path: Path, llama_tiny: Imported) -> Iterator[Api]:
    settings = api_settings(tmp_path / "home")
    import_tiny(settings, llama_tiny)
    store = Deployment(settings).local_store()
    version = set_task(store, MODEL, packaged("banking77")).id
    store.catalog.engine.dispose()
    api, running = serve(settings, in_process(settings), version)
    yield api
    stop(api, running)


def test_a_message_gets_one_of_the_77_intents(routed: Api) -> None:
    answer = httpx.post(
        routed.base_url + "/intents", json={"input": "my card has not arrived yet"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["intent"] in packaged("banking77").labels
    assert 0 < body["score"] <= 1
    assert body["version"] == routed.version


def test_without_a_task_there_is_no_intent_and_bad_input_is_refused(api: Api) -> None:
    answer = httpx.post(api.base_url + "/intents", json={"input": "hello"})
    assert answer.json() == {"object": "intent", "intent": None, "score": None, "version": api.version}
    for body in ({"input": ""}, {"input": 3}, {}):
        refused = httpx.post(api.base_url + "/intents", json=body)
        assert refused.status_code == 400, body
        assert refused.json()["error"]["message"]
