"""Interaction-to-served seconds and `recommend` latency, with the store, a rec worker and the streamer as
separate processes, the way they are deployed.

`llmk serve store`, `llmk serve rec --model M` and `llmk rec stream --model M --source -
--commit-every-seconds S` run as processes (the worker and the streamer reach the store over gRPC). A
probe writes one interaction of a user nobody has seen to the streamer's standard input and polls the
worker over gRPC until its answer for that user is no longer the popular fallback: the interaction has
then been read, learned from, committed as a row version, fetched and applied by the worker. Background
interactions keep the stream busy meanwhile.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from services.rec.interface import Interaction

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "llmk.cli.main"]
FIRST_PROBE_USER = 9_000_000


def environment(home: Path, **settings: str) -> dict[str, str]:
    """This checkout's code, LLMK_HOME at `home`, no LLMK_* from the caller's environment but `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    extra = {f"LLMK_{k.upper()}": v for k, v in settings.items()}
    return {
        **env,
        "LLMK_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": f"{ROOT}/shared:{ROOT}",
        **extra,
    }


def _listening(proc: subprocess.Popen[str], log: Path, timeout: float = 120) -> str:
    """The host:port a `llmk serve` process writes to its log once it listens."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if found := re.search(r"listening on (\S+:\d+)", log.read_text()):
            return found.group(1)
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{proc.args!r} did not start: {log.read_text()[-2000:]}")


@dataclass
class Cluster:
    env: dict[str, str]  # reaches the store process
    store_address: str
    rec_address: str
    stream: subprocess.Popen[str]
    logs: Path


@contextmanager
def cluster(
    env: dict[str, str], model: str, train_args: Sequence[str], commit_seconds: float = 1.0
) -> Iterator[Cluster]:
    """A store process, `model` trained into it, a rec worker serving it and a streamer feeding it; each
    process writes its output to LLMK_HOME/logs/<name>.log."""
    logs = Path(env["LLMK_HOME"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[str]] = []

    def start(
        name: str, *args: str, extra: dict[str, str], stdin: int = subprocess.DEVNULL
    ) -> subprocess.Popen[str]:
        with (logs / f"{name}.log").open("w") as out:
            proc = subprocess.Popen(
                [*COMMAND, *args],
                env=extra,
                cwd=ROOT,
                stdin=stdin,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        procs.append(proc)
        return proc

    try:
        store_proc = start("store", "serve", "store", "--listen", "127.0.0.1:0", extra=env)
        store = _listening(store_proc, logs / "store.log")
        remote = {**env, "LLMK_STORE_ADDRESS": store}
        subprocess.run(
            [*COMMAND, "rec", "train", "--model", model, *train_args], env=remote, cwd=ROOT, check=True
        )
        worker = start("rec", "serve", "rec", "--model", model, "--listen", "127.0.0.1:0", extra=remote)
        rec = _listening(worker, logs / "rec.log")
        stream = start(
            "stream", "rec", "stream", "--model", model, "--source", "-", "--commit-every", "0",
            "--commit-every-seconds", str(commit_seconds), "--json", extra=remote, stdin=subprocess.PIPE,
        )  # fmt: skip
        yield Cluster(remote, store, rec, stream, logs)
    finally:
        for proc in reversed(procs):
            if proc.stdin is not None:
                proc.stdin.close()  # the streamer commits what it holds and prints its summary
        for proc in reversed(procs):
            try:
                proc.wait(30 if proc.stdin is not None else 0.1)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


class Feed:
    """Writes interactions to the streamer's standard input from several threads, timestamps in order."""

    def __init__(self, stdin: IO[str], t0: int):
        self.stdin, self.clock, self.lock = stdin, t0, threading.Lock()
        self.stdin.write("user,item,rating,timestamp\n")

    def send(self, user: int, item: int, rating: float) -> float:
        """Write one interaction now; returns the moment it was handed to the streamer."""
        with self.lock:
            self.clock += 1
            self.stdin.write(f"{user},{item},{rating},{self.clock}\n")
            self.stdin.flush()
            return time.perf_counter()


def background(
    feed: Feed, interactions: Sequence[Interaction], per_second: float, stop: threading.Event
) -> None:
    for r in interactions:
        if stop.wait(1 / per_second):
            return
        feed.send(r.user, r.item, r.rating)


def served_seconds(
    feed: Feed, rec_address: str, model: str, item: int, probes: int, spread: float = 1.0
) -> list[float]:
    """Seconds from writing each probe's interaction to the worker answering for its user. A first probe,
    not counted, waits for the streamer process to be up (it starts reading only once it has loaded). Probes
    are spaced by a random pause of up to `spread` seconds (the commit period), so they land at every phase
    of it rather than always just after a commit."""
    from services.rec.rpc.client import GrpcRecClient

    client = GrpcRecClient(rec_address, model)
    found = []
    pause = random.Random(0)
    try:
        for n in range(-1, probes):
            user = FIRST_PROBE_USER + n + 1
            sent = feed.send(user, item, 5.0)
            deadline = sent + 120
            while client.recommend(user, k=1).popular:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"probe user {user} not served within 120 s")
                time.sleep(0.005)
            if n >= 0:
                found.append(time.perf_counter() - sent)
            time.sleep(pause.uniform(0, spread))
    finally:
        client.close()
    return found


def recommend_seconds(rec_address: str, model: str, users: Sequence[int], k: int = 10) -> list[float]:
    """Client-side seconds of each Recommend call (top k over every item) to the worker over gRPC."""
    from services.rec.rpc.client import GrpcRecClient

    client = GrpcRecClient(rec_address, model)
    found = []
    try:
        client.recommend(users[0], k)  # the channel connects once
        for user in users:
            start = time.perf_counter()
            client.recommend(user, k)
            found.append(time.perf_counter() - start)
    finally:
        client.close()
    return found


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
