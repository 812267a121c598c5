"""`llmk classify` and `llmk generate`, in-process and through a running service: the same answers, and
one-line errors with the error's exit code."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmk.bootstrap import Deployment
from llmk.cli.main import app, run
from services.inference.main import build
from tests.unit.inference.hosting import LABELS, TEMPLATE, create_tiny, settings_for


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    create_tiny(Deployment(settings_for(home)).local_store())
    for name, value in dict(
        LLMK_HOME=str(home), LLMK_DEVICE="cpu", LLMK_CLASSIFY_TEMPLATE=TEMPLATE, LLMK_MAX_CONTEXT_TOKENS="256"
    ).items():
        monkeypatch.setenv(name, value)
    for name in ("LLMK_INFERENCE_ADDRESS", "LLMK_STORE_ADDRESS", "LLMK_DATABASE_URL", "LLMK_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def service(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A worker serving tiny in this process; the CLI reaches it through LLMK_INFERENCE_ADDRESS."""
    worker = build(Deployment(settings_for(home, serve_model="tiny")))
    worker.server.start()
    monkeypatch.setenv("LLMK_INFERENCE_ADDRESS", f"127.0.0.1:{worker.port}")
    yield
    worker.stop()


def invoke(*args: str) -> dict:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def answers() -> tuple[dict, dict]:
    classified = invoke("classify", "--model", "tiny", "--labels", ",".join(LABELS), "--json", "good", "bad")
    generated = invoke("generate", "--model", "tiny@1", "--raw", "--max-tokens", "6", "--json", "The market")
    return classified, generated


def test_in_process_and_through_the_service_answer_alike(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = answers()
    worker = build(Deployment(settings_for(home, serve_model="tiny")))
    worker.server.start()
    monkeypatch.setenv("LLMK_INFERENCE_ADDRESS", f"127.0.0.1:{worker.port}")
    try:
        remote = answers()
    finally:
        worker.stop()
    for classified, generated in (local, remote):
        assert classified["version"] == generated["version"] == 1
        assert [r["label"] for r in classified["results"]] == [r["label"] for r in local[0]["results"]]
        assert (generated["completion_tokens"], generated["finish_reason"]) == (6, "length")
        assert generated["text"] == local[1]["text"]
    assert remote[0]["results"][0]["probabilities"] == pytest.approx(local[0]["results"][0]["probabilities"])


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "service"])
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["classify", "--model", "nope", "x"], 3, "nope"),
        (["classify", "--model", "tiny@99", "x"], 3, "99"),
        (["classify", "--model", "tiny", "--labels", ",".join(map(str, range(200))), "x"], 2, "labels"),
        (["generate", "--model", "tiny", "--max-tokens", "100000", "x"], 2, "max_tokens"),
        (["generate", "--model", "tiny", ""], 2, "empty"),
    ],
)
def test_errors_are_one_line_with_their_exit_code(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    home: Path,
    remote: bool,
    args: list[str],
    code: int,
    message: str,
) -> None:
    if remote:
        request.getfixturevalue("service")
    monkeypatch.setattr(sys, "argv", ["llmk", *args])
    with pytest.raises(SystemExit) as exited:
        run()
    err = capsys.readouterr().err
    assert exited.value.code == code
    assert err.startswith("llmk: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
