"""The demo's report as an analyst reads it: every count explained, no `None`, charts of measured points."""

from __future__ import annotations

import math
from pathlib import Path

from llmk.domain.task_spec import packaged
from services.monitor.adapters.charts import draw, human_bytes, measured_runs, throughput_rates
from services.monitor.usecases.demo_run import Timeline
from services.monitor.usecases.evaluation import Score
from services.monitor.usecases.monitor import Summary
from services.monitor.usecases.report import build, markdown
from services.optimizer.interface import Job, JobSpec, StepRecord


def _report() -> dict:
    t = Timeline()
    t.served_at = {1: 0.0, 3: 40.0, 4: 41.0, 6: 90.0}
    t.zero_shot = Score(1, 0.17, 0.3, 300, 12.0, [100.0])
    t.scores = {1: t.zero_shot, 4: Score(4, 0.5, 0.6, 300, 9.0, [90.0])}
    t.sent_at, t.sent_sizes = [10.0, 20.0], [128, 128]
    t.stream_started, t.stream_seconds, t.settle_seconds = 12.0, 70.0, 20.0
    t.trained_at, t.evaluation_seconds, t.evaluation_passes = 85.0, 30.0, 3
    commits = [
        StepRecord(step=4, version=2, branch="main-job-x-4", promoted=False),
        StepRecord(step=8, version=3, branch="main", promoted=True),
        StepRecord(step=12, version=4, branch="main", promoted=True),
        StepRecord(step=16, version=5, branch="main", promoted=True),
        StepRecord(step=20, version=6, branch="main", promoted=True),
    ]
    job = Job(id="j", spec=JobSpec(model="smol", task=packaged("sentiment")), step=20, commits=commits)
    stored = {1: (538_107_632, 538_060_032), 3: (2_600_000, 538_060_032), 4: (2_600_000, 538_060_032)}
    setup = {"held_out_rows": 300, "optimizer": {"commit_every": 4}}
    baselines = {
        "tfidf_lr": {"macro_f1": 0.58, "accuracy": 0.7},
        "linear_probe": {"macro_f1": 0.6, "accuracy": 0.7},
    }
    return build(t, Summary("r", "smol", read=10, scored=10), job, stored, [], setup, 100.0, 0, baselines)


def test_a_version_never_scored_says_why_in_words_and_no_none_is_printed() -> None:
    r = _report()
    text = markdown(r)
    assert "None" not in text
    assert "| 3 | 40.0 | not scored | not scored |" in text
    assert "Version 3 has no held-out figure: version 4 replaced it 1.0 s after it was first served" in text
    assert "Version 6 has no held-out figure: the run ended before a held-out pass finished on it" in text
    assert r["versions"][0]["not_scored_because"] is None


def test_a_version_scored_pinned_after_it_was_replaced_says_so() -> None:
    t = Timeline()
    t.served_at = {1: 0.0, 2: 10.0, 3: 11.0}
    t.zero_shot = Score(1, 0.17, 0.3, 300, 12.0, [100.0])
    t.scores = {1: t.zero_shot, 2: Score(2, 0.4, 0.5, 300, 9.0, [90.0]), 3: Score(3, 0.5, 0.6, 300, 9.0, [])}
    t.scored_pinned = [2]
    r = build(t, Summary("r", "smol", read=1, scored=1), None, {}, [], {}, 30.0, 0)
    assert [v["scored"] for v in r["versions"]] == ["live", "pinned, after it was replaced", "live"]
    assert "Version(s) 2 were replaced before a live held-out pass finished on them" in markdown(r)


def test_report_explains_committed_promoted_and_served_counts() -> None:
    text = markdown(_report())
    assert "the optimizer committed 5 (one every 4 steps)" in text
    assert "promoted 4 to the serving branch and held the other 1 back" in text
    assert "the workers served 4" in text
    assert "2 of them have a held-out figure" in text


def test_report_explains_why_the_imported_version_is_stored_larger_than_a_full_copy() -> None:
    text = markdown(_report())
    assert "| 538,107,632 | 538,060,032 |" in text
    assert "a full copy counts tensor data only" in text
    assert "header" in text


def test_baselines_and_the_time_split_are_in_both_reports() -> None:
    r = _report()
    assert r["baselines"]["tfidf_lr"]["macro_f1"] == 0.58
    assert r["time_split"]["training_s"] == 75.0
    assert r["time_split"]["streaming_s"] == 70.0
    text = markdown(r)
    assert "TF-IDF + logistic regression 0.58 (accuracy 0.7)" in text
    assert "- streaming: 70.0 s" in text


def test_the_f1_line_joins_only_consecutive_measured_versions() -> None:
    runs = measured_runs(_report()["versions"])
    assert [[v["version"] for v in run] for run in runs] == [[1], [4]]


def test_throughput_breaks_at_gaps_and_drops_the_last_partial_window() -> None:
    samples = [(float(t), 2 * t) for t in range(0, 21)]  # 2 items/s for 20 s
    samples += [(40.0 + s, 42 + 3 * s) for s in range(13)]  # nothing for 20 s, then 3 items/s
    samples.append((52.5, 200))  # a burst in the last half second
    rates = throughput_rates(samples)
    assert [r for _, r in rates[:4]] == [2.0, 2.0, 2.0, 2.0]
    assert math.isnan(rates[4][1])  # nothing drawn across 20-40 s
    assert all(r == 3.0 for _, r in rates[5:])
    assert rates[-1][0] <= 52.0


def test_charts_are_written_with_readable_byte_labels(tmp_path: Path) -> None:
    r = _report()
    written = draw(tmp_path, r, [(float(t), 2 * t) for t in range(30)])
    assert [p.name for p in written] == ["f1.png", "throughput.png", "bytes.png"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert human_bytes(2_600_000) == "2.6 MB"
    assert human_bytes(538_107_632) == "538.1 MB"
