"""An inference worker in a process of its own (`llmk serve inference`), over a store that
the test process shares with it (the same SQLite home), serving the tiny model."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.unit.inference.hosting import TEMPLATE

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class ServiceProcess:
    process: subprocess.Popen[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    port: int = 0
    metrics_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        wants_metrics = self.env.get("LLMK_METRICS_PORT", "0") != "0"
        while not (self.port and (self.metrics_port or not wants_metrics)):
            assert self.process.poll() is None, "the worker exited:\n" + "".join(self.lines[-30:])
            assert time.monotonic() < deadline, "the worker did not start:\n" + "".join(self.lines[-30:])
            for line in list(self.lines):
                if m := re.search(r"listening on .*:(\d+)", line):
                    self.port = int(m.group(1))
                if m := re.search(r"metrics on port (\d+)", line):
                    self.metrics_port = int(m.group(1))
            time.sleep(0.05)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> None:
        """Until a line of the worker's output matches `pattern`."""
        deadline = time.monotonic() + timeout
        while not any(re.search(pattern, line) for line in list(self.lines)):
            assert self.process.poll() is None, "the worker exited:\n" + "".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n" + "".join(self.lines[-30:])
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(home: Path, model: str, *args: str, **settings: Any) -> ServiceProcess:
    """A ready worker process serving `model` from the store at `home`; LLMK_* settings as keywords."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    values: dict[str, Any] = dict(
        home=home,
        serve_model=model,
        listen="127.0.0.1:0",
        device="cpu",
        max_sequences=2,
        max_context_tokens=256,
        classify_template=TEMPLATE,
        metrics_port=0,
    )
    values.update(settings)
    env.update({f"LLMK_{k.upper()}": str(v) for k, v in values.items()})
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=f"{ROOT / 'shared'}{os.pathsep}{ROOT}")
    process = subprocess.Popen(
        [sys.executable, "-m", "llmk.cli.main", "serve", "inference", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = ServiceProcess(process, env)
    threading.Thread(target=running.read, daemon=True).start()
    try:
        running.wait_ready()
    except BaseException:
        running.stop()
        raise
    return running
