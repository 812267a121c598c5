"""The finance monitor's loop, end to end: a stream is scored while analysts' labels train the served model.

`DemoRun` drives what `llmk demo` shows: a held-out evaluation of the zero-shot version, the stream
through the monitor, labelled feedback sent to the optimizer while the stream flows (at fixed points of
it), and a held-out evaluation of every version the workers serve, each on exactly one version. The
held-out rows (valid.csv) are never sent as feedback; stream and feedback rows come from train.csv and
do not overlap.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmk.errors import LlmkError
from services.monitor.usecases.evaluation import Score, evaluate
from services.monitor.usecases.items import Item
from services.monitor.usecases.monitor import Monitor, Scoring, Summary
from services.optimizer.interface import Example, Job

log = logging.getLogger("llmk.demo")


class Jobs(Protocol):
    def submit_feedback(self, job_id: str, examples: Sequence[Example], idempotency_key: str) -> Any: ...
    def get_job(self, job_id: str) -> Job: ...


@dataclass(frozen=True)
class Plan:
    stream: list[Item]
    feedback: list[list[Example]]  # chunks, sent as the stream passes `send_at` fractions
    send_at: list[float]
    held_out: list[tuple[str, str]]  # (text, label) from valid.csv
    labels: tuple[str, ...]
    gate: list[Example]  # the optimizer's validation gate holds these out (train.csv rows, not valid.csv)


@dataclass
class Timeline:
    """What happened when, in seconds since the run started."""

    started: float = field(default_factory=time.monotonic)
    served_at: dict[int, float] = field(default_factory=dict)  # version -> first answer by it
    sent_at: list[float] = field(default_factory=list)  # feedback chunk -> when it was submitted
    sent_sizes: list[int] = field(default_factory=list)  # feedback chunk -> its examples
    scores: dict[int, Score] = field(default_factory=dict)
    zero_shot: Score | None = None
    stream_started: float = 0.0  # seconds since the run started
    stream_seconds: float = 0.0
    throughput: list[tuple[float, int]] = field(default_factory=list)  # (t, items scored)
    settle_seconds: float = 0.0  # after the stream: waiting for the optimizer and the last evaluation
    trained_at: float | None = None  # when the job was first seen past its last full batch
    evaluation_seconds: float = 0.0  # every held-out pass, including those a newer version cut short
    evaluation_passes: int = 0
    scored_pinned: list[int] = field(default_factory=list)  # scored after the run, on a client pinned to it

    def now(self) -> float:
        return time.monotonic() - self.started


class DemoRun:
    def __init__(
        self,
        plan: Plan,
        scoring: Scoring,
        monitor: Monitor,
        jobs: Jobs,
        job_id: str,
        branch_head: Callable[[], int],
        show: Callable[[DemoRun], None] = lambda _: None,
    ):
        self.plan, self.scoring, self.monitor, self.jobs, self.job_id = plan, scoring, monitor, jobs, job_id
        self.branch_head = branch_head
        self.show = show
        self.timeline = Timeline()
        self.job: Job | None = None
        self.phase = "starting"
        self._stop = threading.Event()
        self._streaming = threading.Event()  # cleared while a held-out pass runs: the stream waits for it
        self._streaming.set()
        self.unsettled = ""  # what did not finish in time, in words ("" when everything settled)
        self.served_at_end: int | None = None  # the version the workers serve when the run ends

    # ---- the run

    def run(self, settle_seconds: float = 600.0) -> Timeline:
        t = self.timeline
        self.phase = "held-out evaluation of the zero-shot version"
        self.show(self)
        t.zero_shot = self._evaluate_until_one_version()
        t.served_at[t.zero_shot.version] = t.now()
        t.scores[t.zero_shot.version] = t.zero_shot
        evaluator = threading.Thread(target=self._evaluate_new_versions, name="llmk-demo-eval", daemon=True)
        evaluator.start()
        self.phase = "streaming; feedback flows to the optimizer"
        self.monitor.on_progress = self._on_progress
        began = time.monotonic()
        t.stream_started = t.now()
        self.monitor.run(self._stream_with_feedback())
        t.stream_seconds = time.monotonic() - began
        self.phase = "stream done; waiting for the optimizer and the last evaluation"
        began = time.monotonic()
        self.unsettled = self._settle(settle_seconds)
        t.settle_seconds = time.monotonic() - began
        self._stop.set()
        evaluator.join(timeout=600)
        self.served_at_end = self._probe()
        self.phase = "done" if not self.unsettled else f"did not settle: {self.unsettled}"
        self.show(self)
        return t

    def _stream_with_feedback(self) -> Any:
        marks = [int(f * len(self.plan.stream)) for f in self.plan.send_at]
        for i, item in enumerate(self.plan.stream):
            while marks and i >= marks[0]:
                self._send(len(self.timeline.sent_at))
                marks.pop(0)
            self._streaming.wait(600)
            yield item

    def _send(self, chunk: int) -> None:
        examples = self.plan.feedback[chunk]
        key = hashlib.sha256(f"{self.job_id}:{chunk}".encode()).hexdigest()
        self.jobs.submit_feedback(self.job_id, examples, key)
        self.timeline.sent_at.append(self.timeline.now())
        self.timeline.sent_sizes.append(len(examples))
        log.info("feedback chunk %d (%d examples) sent", chunk, len(examples))

    def _on_progress(self, summary: Summary) -> None:
        t = self.timeline
        if summary.version is not None and summary.version not in t.served_at:
            t.served_at[summary.version] = t.now()
        if not t.throughput or t.now() - t.throughput[-1][0] >= 1.0:
            t.throughput.append((t.now(), summary.scored))
            self.show(self)

    # ---- the optimizer

    def _settle(self, timeout: float) -> str:
        """Until the optimizer has trained on every full batch and the branch head is served and scored;
        what did not settle by the deadline, in words, or ""."""
        deadline = time.monotonic() + timeout
        t = self.timeline
        while True:
            job = self.job = self.jobs.get_job(self.job_id)
            batches = job.items // job.spec.batch_size
            trained = job.done or job.step >= batches
            head = self.branch_head()
            if trained:
                if t.trained_at is None:
                    t.trained_at = t.now()
                if head not in t.served_at and self._probe() == head:
                    t.served_at[head] = t.now()
                if head in t.scores:
                    return ""
            if time.monotonic() >= deadline:
                break
            self.show(self)
            time.sleep(1.0)
        if not trained:
            why = f"the optimizer trained {job.step} of {batches} steps (job {job.id}, {job.status})"
        elif head not in t.served_at:
            why = f"the workers did not serve the branch head, version {head}"
        else:
            why = f"the held-out evaluation of version {head} did not finish"
        log.info("%s within %.0f s", why, timeout)  # the caller reports it
        return f"{why} within {timeout:.0f} s"

    def _probe(self) -> int:
        """The version serving now, from a one-text request."""
        return int(self.scoring.submit([self.plan.held_out[0][0]]).result(300)["version"])

    # ---- held-out evaluation

    def _evaluate_until_one_version(self) -> Score:
        while True:
            score = self._pass()
            if score is not None:
                return score

    def _pass(self) -> Score | None:
        """One held-out pass with the stream held back, so its requests do not queue behind the stream's
        (a pass behind a full stream took about as long as a version lasted, and lost most versions)."""
        began = time.monotonic()
        self._streaming.clear()
        try:
            return evaluate(self.scoring, *self._held_out(), self.plan.labels)
        finally:
            self._streaming.set()
            self.timeline.evaluation_seconds += time.monotonic() - began
            self.timeline.evaluation_passes += 1

    def _evaluate_new_versions(self) -> None:
        """Score each newly served version once; a version replaced mid-pass is skipped for the newer one."""
        while not self._stop.is_set():
            newest = max(self.timeline.served_at)
            if newest in self.timeline.scores:
                self._stop.wait(0.5)
                continue
            score = self._pass()
            if score is not None:
                self.timeline.scores[score.version] = score
                self.timeline.served_at.setdefault(score.version, self.timeline.now())
                self.show(self)

    def score_replaced(self, pinned: Callable[[int], AbstractContextManager[Scoring]]) -> None:
        """Score each version the workers served that no live pass finished on (a newer one replaced it
        mid-pass), through a client pinned to that version, so every served version has a figure."""
        t = self.timeline
        for version in sorted(set(t.served_at) - set(t.scores)):
            self.phase = f"held-out evaluation of version {version}, pinned (it was replaced mid-pass)"
            self.show(self)
            began = time.monotonic()
            try:
                with pinned(version) as scoring:
                    score = evaluate(scoring, *self._held_out(), self.plan.labels)
            except LlmkError as e:
                log.warning("version %d could not be scored pinned: %s", version, e)
                continue
            finally:
                t.evaluation_seconds += time.monotonic() - began
                t.evaluation_passes += 1
            if score is not None and score.version == version:
                t.scores[version] = score
                t.scored_pinned.append(version)
        self.phase = "done" if not self.unsettled else f"did not settle: {self.unsettled}"
        self.show(self)

    def _held_out(self) -> tuple[list[str], list[str]]:
        return [t for t, _ in self.plan.held_out], [label for _, label in self.plan.held_out]
