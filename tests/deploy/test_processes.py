"""The closest thing to `docker compose up` these machines allow: the processes docker-compose.yml describes
(migrate and import jobs, store, inference as a queue worker, optimizer, the monitor), started in its
dependency order with its environment, on the real PostgreSQL and on RabbitMQ loaded with its definitions
file, each waited on with its compose health check, then a classify sent through the quorum `inference`
queue and news published to the monitor's `news` queue.

Only what a container would get from Docker changes: host names become loopback ports, volumes become
folders, the broker is a fresh virtual host, MinIO is moto's S3 server (its bucket step creates the bucket the
compose file names), and the import job imports synthetic:llama-tiny instead of SmolLM2 (fast; the model name
stays the one the workers serve).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import pytest
from deploy_support import ROOT, compose

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq, pytest.mark.slow]

SERVICES = compose()["services"]
STARTED = ("migrate", "import", "store", "inference", "optimizer", "monitor")
DEMO_SOURCE = "synthetic:llama-tiny"
LLMK = str(Path(sys.executable).parent / "llmk")


def start_order(names: tuple[str, ...]) -> list[str]:
    """The services in the order compose starts them: each after everything it depends on."""
    order: list[str] = []

    def visit(name: str) -> None:
        for dependency in SERVICES[name].get("depends_on", {}):
            if dependency in names and dependency not in order:
                visit(dependency)
        if name not in order:
            order.append(name)

    for name in names:
        visit(name)
    return order


@dataclass
class Stack:
    database_url: str
    broker_url: str
    root: Path
    ports: dict[str, int]
    s3_endpoint: str

    def environment(self, service: str) -> dict[str, str]:
        """The service's compose environment, its hosts and volumes mapped onto this machine."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
        for key, value in SERVICES[service]["environment"].items():
            env[key] = self.local(key, str(value))
        env.update(LLMK_HOME=str(self.root / service), HF_HUB_OFFLINE="1")
        if service.startswith("inference"):  # a small KV cache keeps the tiny worker's start fast
            env.update(LLMK_MAX_SEQUENCES="2", LLMK_MAX_CONTEXT_TOKENS="256")
        return env

    def local(self, key: str, value: str) -> str:
        if key == "LLMK_DATABASE_URL":
            return self.database_url
        if key == "LLMK_BROKER_URL":
            return self.broker_url
        if key in ("LLMK_OBJECT_DIR", "LLMK_OPTIMIZER_STATE_DIR"):
            return str(self.root / "volumes" / value.strip("/"))
        if key == "LLMK_S3_ENDPOINT":
            return self.s3_endpoint
        if key == "LLMK_METRICS_PORT":
            return str(free_port())
        if key == "LLMK_LISTEN":
            return "127.0.0.1:0"  # replaced per service by `listen`
        if value.startswith("${"):  # ${VAR:-default}: unset here
            return value.split(":-", 1)[1].rstrip("}")
        if m := re.fullmatch(r"([a-z][\w-]*):50051", value):
            return f"127.0.0.1:{self.ports[m.group(1)]}"
        return value


@dataclass
class Running:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    @property
    def address(self) -> str:
        return self.env["LLMK_LISTEN"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}"
    return done.stdout


@pytest.fixture
def vhost(rabbitmq_url: str) -> Iterator[str]:
    """A fresh virtual host holding infra/rabbitmq/definitions.json (its users aside), and its URL."""
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl is not on PATH (it loads the definitions file); run on the broker's machine"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    name = f"llmk-deploy-{uuid.uuid4().hex[:8]}"
    definitions = json.loads((ROOT / "infra" / "rabbitmq" / "definitions.json").read_text())
    for key in ("users", "vhosts", "permissions"):
        definitions.pop(key)
    for items in definitions.values():
        for item in items:
            item["vhost"] = name
    user = rabbitmq_url.split("://", 1)[1].split(":", 1)[0]
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        import_definitions(definitions)
        wait_until(lambda: "inference" in queues(name), 30, "the definitions were not imported")
        yield f"{urlparse(rabbitmq_url).scheme}://{urlparse(rabbitmq_url).netloc}/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)


def import_definitions(definitions: dict[str, Any]) -> None:
    """rabbitmqctl reads the file as the broker's user: it needs one that user can read (not tmp_path)."""
    fd, path = tempfile.mkstemp(prefix="llmk-definitions-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(definitions, f)
        os.chmod(path, 0o644)
        rabbitmqctl("import_definitions", path)
    finally:
        os.unlink(path)


def queues(vhost: str) -> dict[str, dict[str, str]]:
    out = rabbitmqctl("list_queues", "-q", "-p", vhost, "--formatter", "json", "name", "type", "messages")
    return {q["name"]: q for q in json.loads(out or "[]")}


def wait_until(ready: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, message
        time.sleep(0.5)


def run_job(stack: Stack, name: str) -> str:
    command = [DEMO_SOURCE if a == "smollm2" else a for a in SERVICES[name]["command"]]
    done = subprocess.run(
        [LLMK, *command], env=stack.environment(name), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{name} ({' '.join(command)}) failed:\n{done.stderr[-3000:]}"
    return done.stdout


def start(stack: Stack, name: str) -> Running:
    env = stack.environment(name)
    env["LLMK_LISTEN"] = f"127.0.0.1:{stack.ports[name]}"
    log = stack.root / f"{name}.log"
    sink: IO[bytes] = open(log, "wb")  # noqa: SIM115 - the process holds it until it ends
    command = [stack.broker_url if a.startswith("amqp://") else a for a in SERVICES[name]["command"]]
    process = subprocess.Popen([LLMK, *command], env=env, stdout=sink, stderr=sink)
    sink.close()
    return Running(name, process, log, env)


def wait_healthy(stack: Stack, running: Running, timeout: float = 300.0) -> None:
    """As compose's health check does: its `llmk health ADDRESS` until it exits 0."""
    test = SERVICES[running.name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "llmk", "health"], test
    address = running.address if test[3] == "127.0.0.1:50051" else stack.local("", test[3])
    deadline = time.monotonic() + timeout
    while True:
        assert running.process.poll() is None, f"{running.name} exited:\n{running.output()}"
        check = subprocess.run([LLMK, "health", address], capture_output=True, text=True, timeout=60)
        if check.returncode == 0:
            return
        assert time.monotonic() < deadline, f"{running.name} never became healthy:\n{running.output()}"
        time.sleep(1)


def stop(running: Running) -> None:
    running.process.terminate()
    try:
        running.process.wait(30)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.wait()


def scrape(running: Running) -> str:
    url = f"http://127.0.0.1:{running.env['LLMK_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def check_the_monitor(broker_url: str, database_url: str) -> None:
    """News published to the `news` queue are scored (or rejected, with why) and stored by the monitor."""
    from sqlalchemy import create_engine, text

    from services.monitor.adapters.news_queue import publish

    news = [{"id": f"n{i}", "text": f"$ACME headline number {i}"} for i in range(5)] + [{"text": ""}]
    publish(broker_url, "news", news)
    engine = create_engine(database_url)

    def stored() -> tuple[int, int]:
        with engine.connect() as c:
            scored = c.execute(text("SELECT count(*) FROM monitor_scores")).scalar_one()
            rejected = c.execute(text("SELECT count(*) FROM monitor_rejects")).scalar_one()
        return int(scored), int(rejected)

    wait_until(lambda: stored() == (5, 1), 180, "the monitor never stored the 6 news items")
    engine.dispose()
    vhost = broker_url.rsplit("/", 1)[1]  # acknowledged once stored: the broker's count may lag a moment
    wait_until(lambda: queues(vhost)["news"]["messages"] == 0, 30, "the news were never acknowledged")


def create_the_bucket(endpoint: str) -> None:
    """What compose's `bucket` step does against MinIO: create the bucket its command names, if missing."""
    import boto3

    script = " ".join(SERVICES["bucket"]["command"])
    bucket = re.search(r"mc mb --ignore-existing llmk/(\S+)", script).group(1)  # type: ignore[union-attr]
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)


def test_the_compose_processes_come_up_healthy_and_classify_through_the_queue(
    postgres_url: str, vhost: str, tmp_path: Path, s3_server: Any
) -> None:
    from llmk.bootstrap import Deployment
    from llmk.config import Settings
    from services.inference.queue import tasks

    order = start_order(STARTED)
    assert order[:3] == ["migrate", "import", "store"]
    assert set(order[3:5]) == {"inference", "optimizer"}
    assert order[5:] == ["monitor"]
    stack = Stack(postgres_url, vhost, tmp_path, {n: free_port() for n in SERVICES}, s3_server.endpoint)
    create_the_bucket(stack.s3_endpoint)
    running: list[Running] = []
    try:
        for name in order:
            if SERVICES[name].get("restart") == "no":  # the one-shot jobs run to completion first
                run_job(stack, name)
                continue
            running.append(start(stack, name))
            wait_healthy(stack, running[-1])
        assert "False" in run_job(stack, "import"), "a rerun of the import job imports nothing"

        inference = next(r for r in running if r.name == "inference")
        producer = Settings(_env_file=None, broker_url=vhost, queue_type=inference.env["LLMK_QUEUE_TYPE"])  # type: ignore[call-arg]
        app = Deployment(producer).inference_queue()
        texts = ["Shares jump after record quarterly profit", "The company files for bankruptcy"]
        sent = app.send_task(tasks.CLASSIFY, kwargs={"texts": texts, "labels": ["up", "down"]})
        # an in-process worker started by an earlier test marks this process as a worker: say we may wait
        answer = sent.get(timeout=180, disable_sync_subtasks=False)
        assert answer["version"] == 1
        assert len(answer["results"]) == 2
        assert all(r["label"] in ("up", "down") for r in answer["results"])

        name = vhost.rsplit("/", 1)[1]
        broker = queues(name)
        assert broker["inference"]["type"] == broker["optimizer"]["type"] == "quorum"
        # acknowledged after the answer is sent (acks_late), so the count may lag the answer a moment
        wait_until(lambda: queues(name)["inference"]["messages"] == 0, 30, "classify never acked")
        pages = {r.name: scrape(r) for r in running if "LLMK_METRICS_PORT" in r.env}
        classified = r'llmk_inference_requests_total\{outcome="ok",task="classify"\} [1-9]'
        assert re.search(classified, pages["inference"])
        cached = stack.root / "inference" / "cache" / "objects"  # LLMK_HOME of the inference service
        assert any(cached.rglob("*")), "the worker did not read its model's blocks from the bucket itself"
        assert "llmk_store_" in pages["store"]
        assert "llmk_optimizer_queue_lag_seconds" in pages["optimizer"]
        check_the_monitor(vhost, postgres_url)
    finally:
        for r in reversed(running):
            stop(r)
