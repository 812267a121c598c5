"""`llmk serve api --model M --port P` as a user starts it: a process that answers /health and chat, and
stops on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.store.adapters.importers import Imported
from tests.conftest import make_settings
from tests.e2e.support.conftest import MODEL, import_tiny
from tests.e2e.support.test_evaluate_replies import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_api_answers_chat_and_stops_on_sigterm(tmp_path: Path, llama_tiny: Imported) -> None:
    home = tmp_path / "home"
    import_tiny(make_settings(home), llama_tiny)
    port = free_port()
    env = {"LLMK_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{ROOT / 'shared'}:{ROOT}"}
    argv = [sys.executable, "-m", "llmk.cli.main", "serve", "api", "--model", MODEL, "--port", str(port)]
    server = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy"
            time.sleep(0.2)
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        answer = httpx.post(url + "/v1/chat/completions", json=body)
        assert answer.status_code == 200
        assert answer.headers["llmk-version"] == "1"
        assert httpx.get(url + "/").text.startswith("<!doctype html>")
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    # uvicorn shuts down gracefully, then re-raises the signal so the process ends as SIGTERM asks
    assert server.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in output
