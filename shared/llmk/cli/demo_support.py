"""`llmk demo support`: customer service learning from agents while it serves, with a report at the end.

Embedded: one process on SQLite and local files under --out. It imports SmolLM2 (with the banking77 intent
task), measures the imported version on held-out conversations and banking messages, serves the
OpenAI-compatible gateway on a free loopback port, and sends training conversations through it with the
official `openai` client (streamed). Each draft comes back as feedback: a thumbs-up when it is already
close to the agent's reference reply (ROUGE-L >= UP_ROUGE), else a thumbs-down with the reference as the
agent's correction. The model's standing replies job trains on them and the gateway hot-applies each
version its gate passes; the last served version is measured like the first.
"""

from __future__ import annotations

import os
import resource
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from llmk.bootstrap import embedded
from llmk.cli.context import Json, deployment
from llmk.cli.output import console, emit
from llmk.config import Settings
from llmk.errors import InvalidInput, Unavailable
from services.support.usecases.demo_run import Exchange, Run, build_report

if TYPE_CHECKING:
    from llmk.bootstrap import Deployment
    from services.optimizer.interface import JobsClient
    from services.support.interface import Pair
    from services.support.usecases.demo_data import Splits
    from services.support.usecases.replies import SupportService

MODEL = "smol"
UP_ROUGE = 0.5  # a draft this close to the reference is good as it is: a thumbs-up, no correction
# The replies job: AdamW on the last 4 layers' MLPs, 20% of each update kept. Chosen on the dev split (12
# training rows, the job's gate) with SmolLM2 and the default sizes: lr 1e-3 reached dev NLL 1.689 and its
# third version overshot (2.00, held back); lr 5e-4 reached 1.661 (bench/results/support-notes.md).
REPLIES_LR, REPLIES_TOPK, REPLIES_LAYERS = 5e-4, 0.2, 4


def register(group: typer.Typer) -> None:
    group.command("support")(support)


def support(
    out: Annotated[Path, typer.Option(help="Folder for the report, the charts and the store")] = Path(
        "llmk-demo-support"
    ),
    source: Annotated[
        str, typer.Option(help="Model to import: smollm2, or synthetic:llama-tiny for a quick dry run")
    ] = "smollm2",
    conversations: Annotated[
        int, typer.Option(help="Training conversations sent through the API, each answered by feedback")
    ] = 32,
    dev: Annotated[int, typer.Option(help="Training rows the replies job's gate holds out")] = 12,
    held_out: Annotated[
        int, typer.Option(help="Held-out conversations each measured version is scored on")
    ] = 16,
    generate: Annotated[int, typer.Option(help="Greedy replies scored by ROUGE-L (first held-out rows)")] = 2,
    max_tokens: Annotated[int, typer.Option(help="Longest reply, through the API and greedy")] = 32,
    intent_train: Annotated[int, typer.Option(help="banking77 rows the intent baselines train on")] = 1000,
    intent_held_out: Annotated[int, typer.Option(help="banking77 held-out messages")] = 40,
    clients: Annotated[int, typer.Option(help="Concurrent streaming clients")] = 4,
    batch: Annotated[int, typer.Option(help="Rated replies per step of the replies job")] = 8,
    commit_every: Annotated[int, typer.Option(help="Steps per committed version")] = 2,
    lr: Annotated[float, typer.Option(help="The replies job's learning rate")] = REPLIES_LR,
    topk: Annotated[
        float, typer.Option(help="Fraction of each tensor's update a version keeps")
    ] = REPLIES_TOPK,
    layers: Annotated[
        int, typer.Option(help="Trainable: the MLPs of this many last layers")
    ] = REPLIES_LAYERS,
    rank: Annotated[int, typer.Option(help="Rank of each matrix's update (0: --topk entries)")] = 0,
    local_steps: Annotated[
        bool, typer.Option(help="The replies job trains ahead of the served version (pair with --rank)")
    ] = False,
    probe: Annotated[
        bool, typer.Option(help="Also a linear probe on the model's features (a pass over the intent rows)")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for the splits")] = 0,
    settle_seconds: Annotated[
        float, typer.Option(help="After the traffic, how long to wait for training to catch up")
    ] = 600.0,
    json_: Json = False,
) -> None:
    """Import SmolLM2, serve it through the OpenAI-compatible API, send agents' corrections back, report."""
    from services.support.usecases.demo_data import Sizes, make_splits

    if clients < 1 or batch < 1 or commit_every < 1 or max_tokens < 1 or generate < 0 or layers < 1:
        raise InvalidInput(
            "need --clients, --batch, --commit-every, --max-tokens, --layers >= 1, --generate >= 0"
        )
    if not 0 < topk <= 1 or lr <= 0 or rank < 0:
        raise InvalidInput("need 0 < --topk <= 1, --lr > 0 and --rank >= 0")
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"--out {out} is a file: name a folder for the report")
    started, load_at_start = time.time(), [round(x, 2) for x in os.getloadavg()]
    splits = make_splits(Sizes(conversations, dev, held_out, intent_train, intent_held_out), seed)
    out.mkdir(parents=True, exist_ok=True)
    home = out / "home"
    shutil.rmtree(home, ignore_errors=True)  # a fresh store: the report covers this run only
    limits = {"serve_model": MODEL, "reply_batch_size": batch, "max_sequences": max(clients, 2)}
    settings = embedded(Settings(), home).model_copy(update=limits)
    _say(f"importing {source} as {MODEL!r} (task: banking77 intents)", json_)
    _import(settings, source)
    tiers = deployment(settings)
    _say(
        f"measuring version 1 (zero-shot): {held_out} held-out conversations, {intent_held_out} intents",
        json_,
    )
    zero = measure(tiers, 1, splits, generate, max_tokens)
    _say(f"zero-shot: {_figures(zero)}", json_)
    _say(f"intent baselines on the same {intent_train} banking77 rows", json_)
    baselines = intent_baselines(tiers, splits, probe)
    job_setup = {
        "batch_size": batch,
        "lr": lr,
        "topk": topk,
        "commit_every": commit_every,
        "rank": rank,
        "local_steps": local_steps,
        "trainable": f"last {layers} MLPs",
    }
    run = serve_and_learn(tiers, splits, job_setup, layers, clients, max_tokens, settle_seconds, json_)
    final_version = run.served_at_end
    _say(f"measuring the served version {final_version}", json_)
    final = measure(tiers, final_version, splits, generate, max_tokens) if final_version != 1 else zero
    setup = {
        "source": source,
        "mode": "embedded",
        "seed": seed,
        "splits": {
            "conversations": len(splits.conversations),
            "dev": len(splits.dev),
            "held_out": len(splits.held_out),
            "intent_train": len(splits.intent_train),
            "intent_held_out": len(splits.intent_held_out),
        },
        "generate": generate,
        "max_tokens": max_tokens,
        "clients": clients,
        "up_rouge": UP_ROUGE,
        "replies_job": job_setup,
    }
    report = build_report(setup, zero, final, baselines, run, time.time() - started)
    # the machine may be shared: the CPU this run used and the load it ran under explain its wall time
    usage = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    report["load_average"] = {"start": load_at_start, "end": [round(x, 2) for x in os.getloadavg()]}
    report["cpu_count"] = os.cpu_count()
    from services.support.adapters.demo_report import write

    write(out, report)
    emit(
        json_,
        report,
        [{"figure": k, "value": v} for k, v in report["headline"].items()],
        title="llmk demo support",
    )
    if run.unsettled:
        raise Unavailable(f"the demo did not finish: {run.unsettled} (report in {out})")


def _import(settings: Settings, source: str) -> None:
    from llmk.domain.task_spec import TASK_KEY, encode_task, packaged
    from llmk.domain.versions import CommitInfo
    from services.store.adapters.importers import load_source

    store = deployment(settings).store()
    try:
        imported = load_source(source, settings.max_header_bytes, settings.max_import_file_bytes)
        info = CommitInfo(
            message=f"import {imported.source}", metadata={TASK_KEY: encode_task(packaged("banking77"))}
        )
        store.create_model(MODEL, imported.tensors, imported.config, imported.files, info)
    finally:
        store.close()


def measure(
    tiers: Deployment, version: int, splits: Splits, generate: int, max_tokens: int
) -> dict[str, Any]:
    """One version's figures: held-out reply NLL per token, ROUGE-L of greedy replies, intent accuracy."""
    from services.support.adapters.scoring import StoredReplyScorer
    from services.support.usecases.evaluation import evaluate_replies

    began = time.monotonic()
    store = tiers.store()
    try:
        scorer = StoredReplyScorer(store, MODEL, str(version))
    finally:
        store.close()
    inference = tiers.inference(MODEL, str(version))
    try:
        loaded = time.monotonic()
        score = evaluate_replies(scorer, inference, splits.held_out, generate, max_tokens)
        replies = time.monotonic()
        texts = [text for text, _ in splits.intent_held_out]
        predicted = [
            r.label for i in range(0, len(texts), 16) for r in inference.classify(texts[i : i + 16]).results
        ]
    finally:
        inference.close()
    right = sum(p == label for p, (_, label) in zip(predicted, splits.intent_held_out, strict=True))
    return {
        "version": version,
        "nll_per_token": round(score.nll_per_token, 4),
        "reply_tokens": score.tokens,
        "rouge_l": None if score.rouge_l is None else round(score.rouge_l, 4),
        "greedy_replies": score.generated,
        "intent_accuracy": round(right / len(predicted), 4),
        "seconds": round(time.monotonic() - began, 1),
        "seconds_loading": round(loaded - began, 1),
        "seconds_replies": round(replies - loaded, 1),  # NLL and greedy replies
        "seconds_intents": round(time.monotonic() - replies, 1),
    }


def intent_baselines(tiers: Deployment, splits: Splits, probe: bool) -> dict[str, dict[str, float]]:
    """What the same banking77 rows give a bag of words and (`probe`) a linear probe on the imported
    model's features."""
    from llmk.domain.task_spec import packaged
    from services.optimizer.interface import Example
    from services.optimizer.usecases import baselines
    from services.optimizer.usecases.feedback import load_trainer

    task = packaged("banking77")
    train = [Example(text=t, label=label) for t, label in splits.intent_train]
    held = [Example(text=t, label=label) for t, label in splits.intent_held_out]
    found = {"tfidf_lr": baselines.tfidf_lr(train, held, task.labels).as_dict()}
    if probe:
        store = tiers.store()
        try:
            trainer = load_trainer(store, MODEL, "1", task, [])
        finally:
            store.close()
        found["linear_probe"] = baselines.linear_probe(trainer, train, held).as_dict()
    return found


def serve_and_learn(
    tiers: Deployment,
    splits: Splits,
    job_setup: dict[str, Any],
    layers: int,
    clients: int,
    max_tokens: int,
    settle_seconds: float,
    quiet: bool,
) -> Run:
    from services.optimizer.interface import REPLIES, UP, reply_example
    from services.support.main import build
    from services.support.usecases.learning import ReplyJobs

    store = tiers.store()
    try:
        depth = int(store.model(MODEL).config.get("num_hidden_layers", 1))
    finally:
        store.close()
    trainable = tuple(f"model.layers.{i}.mlp" for i in range(max(0, depth - layers), depth))
    setup = ReplyJobs(
        branch="main",
        batch_size=job_setup["batch_size"],
        lr=job_setup["lr"],
        topk=job_setup["topk"],
        commit_every=job_setup["commit_every"],
        trainable=trainable,
        rank=job_setup["rank"],
        local_steps=job_setup["local_steps"],
    )
    dev = [reply_example([("user", p.instruction)], p.response, UP) for p in splits.dev]
    with tiers.jobs(worker=True) as jobs:
        job = setup.standing(jobs, MODEL, dev)  # the gateway's feedback finds this job and feeds it
        support, app = build(tiers, jobs=jobs)
        support.start()
        if not support.wait_ready(300).ready:
            raise Unavailable(f"the gateway did not load {MODEL}: {support.health().detail}")
        with _server(app) as base_url, _watch(support) as served:
            _say(
                f"serving the OpenAI-compatible API at {base_url}; {len(splits.conversations)} conversations",
                quiet,
            )
            began = time.time()
            exchanges = _traffic(base_url, splits.conversations, clients, max_tokens, quiet)
            traffic = time.time() - began
            _say(f"traffic done in {traffic:.0f} s; waiting for the replies job to train on it", quiet)
            with _probing(base_url, splits.dev, max_tokens) as probes:
                unsettled = _settle(jobs, job.id, support, served, settle_seconds, quiet)
            jobs.cancel_job(job.id)  # the demo's job ends with it
            final = jobs.get_job(job.id)
            at_end = support.health().version
        support.close()
    assert final.spec.kind == REPLIES
    store = tiers.store()
    try:
        stored = {s.version: (s.stored_bytes, s.full_bytes) for s in store.stats(MODEL)}
        created = {v.id: v.created_at.timestamp() for v in store.log(MODEL, "main", 1000)}
    finally:
        store.close()
    commits = [asdict(c) for c in final.commits]
    job_figures = {
        "id": final.id,
        "items": final.items,
        "steps": final.step,
        "batch_size": final.spec.batch_size,
        "baseline_dev_logprob": final.baseline,
    }
    return Run(
        exchanges,
        list(probes),
        dict(served),
        job_figures,
        commits,
        stored,
        created,
        traffic,
        at_end,
        unsettled,
    )


@contextmanager
def _server(app: Any) -> Iterator[str]:
    """The gateway under uvicorn on a free loopback port, on a thread of this process."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="llmk-demo-api", daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
        if not thread.is_alive():
            raise Unavailable("the API server did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def _watch(support: SupportService) -> Iterator[dict[int, float]]:
    """When the gateway first serves each version (polled every 50 ms)."""
    served: dict[int, float] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            served.setdefault(support.health().version, time.time())
            stop.wait(0.05)

    thread = threading.Thread(target=poll, name="llmk-demo-watch", daemon=True)
    thread.start()
    try:
        yield served
    finally:
        stop.set()
        thread.join()


def _traffic(base_url: str, rows: list[Pair], clients: int, max_tokens: int, quiet: bool) -> list[Exchange]:
    import httpx
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    done: list[Exchange] = []
    lock = threading.Lock()

    def converse(index: int) -> Exchange:
        exchange = _converse(client, base_url, index, rows[index], max_tokens, httpx)
        with lock:
            done.append(exchange)
            if not quiet and (len(done) % 8 == 0 or len(done) == len(rows)):
                ups = sum(e.rating == "up" for e in done)
                _say(
                    f"  {len(done)}/{len(rows)} conversations (version {exchange.version} answering, "
                    f"{ups} thumbs-up, {len(done) - ups} corrections)",
                    quiet,
                )
        return exchange

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(converse, range(len(rows))))


def _converse(client: Any, base_url: str, index: int, row: Pair, max_tokens: int, httpx: Any) -> Exchange:
    from services.support.usecases.rouge import rouge_l

    answer_id, draft, exchange = _stream(client, index, row.instruction, max_tokens)
    score = rouge_l(draft, row.response)
    body: dict[str, Any] = {"id": answer_id, "rating": "up"}
    if score < UP_ROUGE:
        body = {"id": answer_id, "rating": "down", "correction": row.response}
    sent = time.time()
    reply = httpx.post(f"{base_url}/feedback", json=body, timeout=60)
    if reply.status_code != 200:
        raise Unavailable(f"feedback on {answer_id} was refused: {reply.status_code} {reply.text}")
    examples = int(bool(draft.strip())) + int("correction" in body)  # as learning.rated counts them
    return replace(
        exchange, rouge_l=round(score, 4), rating=body["rating"], examples=examples, feedback_sent=sent
    )


def _stream(client: Any, index: int, message: str, max_tokens: int) -> tuple[str, str, Exchange]:
    """One streamed chat completion: its id, its text, and its timings (no feedback yet)."""
    began, first = time.time(), None
    pieces: list[str] = []
    answer_id, fingerprint, tokens = "", "", 0
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": message}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        answer_id, fingerprint = chunk.id, chunk.system_fingerprint or fingerprint
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.time()
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    seconds = time.time() - began
    version = int(fingerprint.rpartition("@")[2] or 0)
    ttft = None if first is None else first - began
    exchange = Exchange(index, version, began, ttft, seconds, tokens, 0.0, "none", 0, 0.0)
    return answer_id, "".join(pieces), exchange


@contextmanager
def _probing(base_url: str, rows: list[Pair], max_tokens: int) -> Iterator[list[Exchange]]:
    """While training catches up, one client keeps streaming (dev messages, no feedback), so each version's
    serving figures are measured as it is hot-applied."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    probes: list[Exchange] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            message = rows[len(probes) % len(rows)].instruction
            probes.append(_stream(client, len(probes), message, max_tokens)[2])
            stop.wait(1.0)

    thread = threading.Thread(target=loop, name="llmk-demo-probe", daemon=True)
    thread.start()
    try:
        yield probes
    finally:
        stop.set()
        thread.join(600)


def _settle(
    jobs: JobsClient,
    job_id: str,
    support: SupportService,
    served: dict[int, float],
    limit: float,
    quiet: bool,
) -> str:
    """Wait until the job has stepped on every full batch and its last promoted version is served."""
    deadline, last = time.monotonic() + limit, 0.0
    while True:
        job = jobs.get_job(job_id)
        if job.error:
            return f"the replies job failed: {job.error}"
        promoted = [c.version for c in job.commits if c.promoted and c.version is not None]
        caught_up = job.step >= job.items // job.spec.batch_size
        if caught_up and (not promoted or promoted[-1] in served):
            return ""
        if time.monotonic() > deadline:
            batches = job.items // job.spec.batch_size
            return f"after {limit:.0f} s the job had stepped {job.step} of {batches} batches"
        if time.monotonic() - last > 15:
            last = time.monotonic()
            _say(
                f"  job: {job.step} steps of {job.items // job.spec.batch_size}, {len(job.commits)} commits",
                quiet,
            )
        time.sleep(0.5)


def _figures(m: dict[str, Any]) -> str:
    return (
        f"NLL/token {m['nll_per_token']:.3f}, ROUGE-L {m['rouge_l']}, intent accuracy "
        f"{m['intent_accuracy']:.3f} ({m['seconds']:.0f} s)"
    )


def _say(text: str, quiet: bool) -> None:
    if not quiet:
        console.print(f"[bold]llmk demo support[/bold]: {text}", highlight=False)
