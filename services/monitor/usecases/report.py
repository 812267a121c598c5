"""The demo's report: what the run measured, as report.json (for checks) and report.md (for people)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.monitor.interface import AlertRecord
from services.monitor.usecases.demo_run import Timeline
from services.monitor.usecases.monitor import Summary
from services.optimizer.interface import Job


def build(
    timeline: Timeline,
    summary: Summary,
    job: Job | None,
    stored: dict[int, tuple[int, int]],  # version -> (bytes stored, bytes of a full copy)
    alerts: Sequence[AlertRecord],
    setup: dict[str, Any],
    wall_seconds: float,
    scored_twice: int,
) -> dict[str, Any]:
    zero = timeline.zero_shot
    versions = [_version(v, timeline, stored) for v in sorted(timeline.served_at)]
    final = next((v for v in reversed(versions) if v["macro_f1"] is not None), None)
    s = summary.as_dict()
    return {
        "zero_shot_version": zero.version if zero else None,
        "zero_shot_macro_f1": _r(zero.macro_f1) if zero else None,
        "zero_shot_accuracy": _r(zero.accuracy) if zero else None,
        "final_version": final["version"] if final else None,
        "final_macro_f1": final["macro_f1"] if final else None,
        "final_accuracy": final["accuracy"] if final else None,
        "macro_f1_gain": _r(final["macro_f1"] - zero.macro_f1) if final and zero else None,
        "versions": versions,
        "in": s["in"],
        "scored": s["scored"],
        "rejected": s["rejected"],
        "scored_twice": scored_twice,  # from the stored scores: items holding more than one
        "duplicates_rejected": s["duplicates"],
        "lost": s["in"] - s["scored"] - s["rejected"],
        "wall_seconds": round(wall_seconds, 1),
        "tiers": _tiers(timeline, summary, job),
        "feedback_to_served_seconds": _feedback_latency(timeline, job),
        "alerts": [_alert(a) for a in alerts],
        "setup": setup,
    }


def _version(v: int, t: Timeline, stored: dict[int, tuple[int, int]]) -> dict[str, Any]:
    score = t.scores.get(v)
    size, full = stored.get(v, (0, 0))
    return {
        "version": v,
        "served_at_s": round(t.served_at[v], 1),
        "macro_f1": _r(score.macro_f1) if score else None,
        "accuracy": _r(score.accuracy) if score else None,
        "bytes_stored": size,
        "bytes_full_copy": full,
    }


def _tiers(t: Timeline, summary: Summary, job: Job | None) -> dict[str, Any]:
    s = summary.as_dict()
    requests = sorted(ms for score in t.scores.values() for ms in score.request_ms)
    evaluated = sum(score.items for score in t.scores.values())
    eval_seconds = sum(score.seconds for score in t.scores.values())
    return {
        "monitor": {
            "items_per_second": _r(s["scored"] / t.stream_seconds) if t.stream_seconds else None,
            "item_latency_ms_p50": s["latency_ms_p50"],
            "item_latency_ms_p99": s["latency_ms_p99"],
        },
        "inference": {
            "held_out_items_per_second": _r(evaluated / eval_seconds) if eval_seconds else None,
            "request_ms_p50": _q(requests, 0.5),
            "request_ms_p99": _q(requests, 0.99),
            "request_texts": 32,
        },
        "optimizer": {
            "steps": job.step if job else 0,
            "versions_committed": len(job.commits) if job else 0,
            "versions_promoted": sum(c.promoted for c in job.commits) if job else 0,
            "held_out_gate_metric": _r(job.metric) if job and job.metric is not None else None,
        },
    }


def _feedback_latency(t: Timeline, job: Job | None) -> list[dict[str, Any]]:
    """For each feedback chunk: from sending it to the first served version trained on all of it."""
    if job is None:
        return []
    out = []
    total = 0
    for chunk, (sent, size) in enumerate(zip(t.sent_at, t.sent_sizes, strict=True)):
        total += size
        needed = total // job.spec.batch_size  # the step that trains this chunk's last full batch
        trained = [c.version for c in job.commits if c.promoted and c.step >= needed and c.version]
        served = [t.served_at[v] for v in trained if v in t.served_at]
        seconds = _r(min(served) - sent) if served else None
        out.append({"chunk": chunk, "examples": size, "sent_at_s": round(sent, 1), "seconds": seconds})
    return out


def _alert(a: AlertRecord) -> dict[str, Any]:
    d = dataclasses.asdict(a)
    d["opened"] = a.opened.isoformat()
    d["cleared"] = a.cleared.isoformat() if a.cleared else None
    return d


def write(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(report))


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# llmk finance monitor: demo report",
        "",
        f"Held-out macro-F1 (a sample of {r['setup'].get('held_out_rows')} valid.csv rows, never feedback):",
        f"zero-shot **{r['zero_shot_macro_f1']}** (version {r['zero_shot_version']}) -> last served "
        f"**{r['final_macro_f1']}** (version {r['final_version']}), gain {r['macro_f1_gain']}.",
        "",
        f"Stream: {r['in']} in, {r['scored']} scored, {r['rejected']} rejected, "
        f"{r['scored_twice']} scored twice, {r['lost']} lost; whole run {r['wall_seconds']} s.",
        "",
        "| version | served at (s) | macro-F1 | accuracy | bytes stored | full copy |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {v['version']} | {v['served_at_s']} | {v['macro_f1']} | {v['accuracy']} | {v['bytes_stored']:,} "
        f"| {v['bytes_full_copy']:,} |"
        for v in r["versions"]
    ]
    lines += ["", "## Tiers", "", "```json", json.dumps(r["tiers"], indent=2), "```", ""]
    lines += ["## Feedback to served", ""]
    lines += [
        f"- chunk {f['chunk']} ({f['examples']} examples) sent at {f['sent_at_s']} s: "
        f"served after {f['seconds']} s"
        for f in r["feedback_to_served_seconds"]
    ]
    lines += ["", "## Alerts", ""]
    for a in r["alerts"]:
        lines.append(
            f"- **{a['ticker']}** {a['direction']} (share {a['share']}, {a['mentions']} mentions, "
            f"version {a['version']}), opened {a['opened']}, cleared {a['cleared']}"
        )
        for e in a["evidence"]:
            words = ", ".join(f"{w} ({s:+.3f})" for w, s in e["top_tokens"])
            lines.append(f"  - {e['text'][:120]!r}: {e['label']} {e['probability']:.2f}; words: {words}")
    lines += ["", "Charts: f1.png (held-out figures per version), throughput.png, bytes.png.", ""]
    return "\n".join(lines)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _q(values: list[float], q: float) -> float | None:
    return _r(values[min(len(values) - 1, int(q * len(values)))]) if values else None
