"""Tier processes for `llmk demo --distributed`: each tier is `llmk serve TIER` in its own process,
started with the caller's settings, on a free port, logging to a file; stopped with SIGTERM at the end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from llmk.config import Settings
from llmk.errors import Unavailable

LISTENING = re.compile(r"listening on (\S+:\d+)")


class TierProcesses:
    def __init__(self, settings: Settings, logs: Path, start_timeout: float = 300.0):
        self.settings, self.logs, self.start_timeout = settings, logs, start_timeout
        self.running: list[subprocess.Popen[str]] = []

    def __enter__(self) -> TierProcesses:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.running):
            p.terminate()
        for p in reversed(self.running):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()

    def start(self, tier: str, name: str = "", **env: str) -> str:
        """Start `llmk serve tier`; returns its gRPC address once it listens."""
        name = name or tier
        environment = {**os.environ, **env, "LLMK_LISTEN": "127.0.0.1:0", "LLMK_METRICS_PORT": "0"}
        # `llmk` itself: the console script's module, run by this interpreter
        command = [sys.executable, "-m", "llmk.cli.main", "serve", tier]
        p = subprocess.Popen(
            command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        self.running.append(p)
        found: list[str] = []
        ready = threading.Event()
        log = (self.logs / f"{name}.log").open("w")
        threading.Thread(target=_copy, args=(p.stdout, log, found, ready), daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while not ready.wait(0.2):
            if p.poll() is not None or time.monotonic() > deadline:
                raise Unavailable(f"{name} did not start (see {self.logs / (name + '.log')})")
        return found[0]


def _copy(stream: IO[str] | None, log: IO[str], found: list[str], ready: threading.Event) -> None:
    assert stream is not None
    with log:
        for line in stream:
            log.write(line)
            log.flush()
            if not ready.is_set() and (m := LISTENING.search(line)):
                found.append(m.group(1))
                ready.set()
