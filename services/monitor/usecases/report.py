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
    baselines: dict[str, dict[str, float]] | None = None,
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
        "baselines": baselines or {},
        "time_split": _time_split(timeline),
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
        "scored": None if not score else "pinned, after it was replaced" if v in t.scored_pinned else "live",
        "not_scored_because": None if score else _why_not_scored(v, t),
        "bytes_stored": size,
        "bytes_full_copy": full,
    }


def _why_not_scored(v: int, t: Timeline) -> str:
    later = sorted(u for u in t.served_at if u > v)
    if not later:
        return "the run ended before a held-out pass finished on it"
    gap = t.served_at[later[0]] - t.served_at[v]
    return (
        f"version {later[0]} replaced it {gap:.1f} s after it was first served, before a held-out pass "
        "answered by it alone finished"
    )


def _time_split(t: Timeline) -> dict[str, Any]:
    """Wall-clock spans of the run's phases; they overlap (the optimizer trains while the stream flows)."""
    first_sent, trained = (t.sent_at[0] if t.sent_at else None), t.trained_at
    return {
        "zero_shot_evaluation_s": _r(t.stream_started),
        "streaming_s": _r(t.stream_seconds),
        "settling_s": _r(t.settle_seconds),
        "training_s": _r(trained - first_sent) if first_sent is not None and trained is not None else None,
        "evaluation_s": _r(t.evaluation_seconds),
        "evaluation_passes": t.evaluation_passes,
        "note": "spans overlap: the optimizer trains and held-out passes run while the stream flows; "
        "training_s runs from the first feedback sent to the job's last step seen",
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
        _headline(r),
        *_baseline_lines(r),
        "",
        f"Stream: {r['in']} in, {r['scored']} scored, {r['rejected']} rejected, "
        f"{r['scored_twice']} scored twice, {r['lost']} lost; whole run {r['wall_seconds']} s.",
        "",
        *_count_lines(r),
        *_end_lines(r),
        "",
        "| version | served at (s) | macro-F1 | accuracy | bytes stored | full copy |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {v['version']} | {v['served_at_s']} | {_scored(v, 'macro_f1')} | {_scored(v, 'accuracy')} "
        f"| {v['bytes_stored']:,} | {v['bytes_full_copy']:,} |"
        for v in r["versions"]
    ]
    lines += ["", *_not_scored_lines(r), BYTES_NOTE, ""]
    lines += ["## Time", "", *_time_lines(r.get("time_split", {})), ""]
    lines += ["## Tiers", "", "```json", json.dumps(r["tiers"], indent=2), "```", ""]
    lines += ["## Feedback to served", ""]
    lines += [
        f"- chunk {f['chunk']} ({f['examples']} examples) sent at {f['sent_at_s']} s: "
        + (
            f"served after {f['seconds']} s"
            if f["seconds"] is not None
            else "no served version trained on it"
        )
        for f in r["feedback_to_served_seconds"]
    ]
    lines += ["", "## Alerts", "", *_alert_lines(r["alerts"])]
    lines += ["", "Charts: f1.png (held-out figures per version), throughput.png, bytes.png.", ""]
    return "\n".join(lines)


def _headline(r: dict[str, Any]) -> str:
    if r["zero_shot_macro_f1"] is None:
        return "no version was scored: the zero-shot held-out pass did not finish."
    zero = f"zero-shot **{_f(r['zero_shot_macro_f1'])}** (version {r['zero_shot_version']})"
    if r["final_version"] == r["zero_shot_version"]:
        return f"{zero}; no later version was scored."
    return (
        f"{zero} -> last scored **{_f(r['final_macro_f1'])}** (version {r['final_version']}), "
        f"gain {_f(r['macro_f1_gain'])}."
    )


BYTES_NOTE = (
    "Bytes stored are the object files a version adds (safetensors files: tensor data plus each file's "
    "header); a full copy counts tensor data only. So the imported version is stored a little larger than "
    "a full copy (its headers), and each later version stores only its sparse or low-rank entries."
)


def _count_lines(r: dict[str, Any]) -> list[str]:
    o = r["tiers"]["optimizer"]
    scored = sum(v["macro_f1"] is not None for v in r["versions"])
    return [
        f"Versions: the optimizer committed {o['versions_committed']} (one every "
        f"{r['setup'].get('optimizer', {}).get('commit_every', '?')} steps); its gate promoted "
        f"{o['versions_promoted']} to the serving branch and held the other "
        f"{o['versions_committed'] - o['versions_promoted']} back on candidate branches; the workers served "
        f"{len(r['versions'])} (the imported version and the promoted ones they picked up: a worker applies "
        f"only the newest head between batches, so a version replaced before then is never served); "
        f"{scored} of them have a held-out figure.",
    ]


def _end_lines(r: dict[str, Any]) -> list[str]:
    lines = []
    if r.get("served_at_end") is not None:
        lines.append(f"At the end the workers served version {r['served_at_end']}.")
    if r.get("unsettled"):
        lines.append(f"The run did not finish its work: {r['unsettled']}.")
    return ["", *lines] if lines else []


def _not_scored_lines(r: dict[str, Any]) -> list[str]:
    pinned = [str(v["version"]) for v in r["versions"] if v.get("scored", "live") != "live" and v["scored"]]
    lines = [
        f"Version {v['version']} has no held-out figure: {v['not_scored_because']}."
        for v in r["versions"]
        if v["macro_f1"] is None
    ]
    if pinned:
        lines.append(
            f"Version(s) {', '.join(pinned)} were replaced before a live held-out pass finished on them; "
            "each was scored after the run on a client pinned to it (same rows, same task)."
        )
    return lines


def _baseline_lines(r: dict[str, Any]) -> list[str]:
    names = {"tfidf_lr": "TF-IDF + logistic regression", "linear_probe": "linear probe on the frozen model"}
    names["dense"] = "dense fine-tune of the same tensors"
    shown = [
        f"{names.get(k, k)} {_f(b['macro_f1'])} (accuracy {_f(b['accuracy'])})"
        for k, b in r.get("baselines", {}).items()
    ]
    if not shown:
        return []
    head = (
        "Baselines, trained on exactly the feedback rows the demo sent and scored on the same held-out rows:"
    )
    return ["", head, *[f"- {line}" for line in shown]]


def _time_lines(t: dict[str, Any]) -> list[str]:
    words = {
        "zero_shot_evaluation_s": "zero-shot held-out pass, before the stream",
        "streaming_s": "streaming",
        "settling_s": "after the stream, waiting for the optimizer's last version and its held-out pass",
        "training_s": "the optimizer training (from the first feedback to its last step)",
        "evaluation_s": f"held-out passes ({t.get('evaluation_passes', 0)}, overlapping the stream)",
    }
    return [f"- {words[k]}: " + ("n/a" if t[k] is None else f"{t[k]:.1f} s") for k in words if k in t]


def _alert_lines(alerts: list[dict[str, Any]]) -> list[str]:
    lines = []
    for a in alerts:
        lines.append(
            f"- **{a['ticker']}** {a['direction']} (share {a['share']}, {a['mentions']} mentions, "
            f"version {a['version']}), opened {a['opened']}, "
            + (f"cleared {a['cleared']}: {a['cleared_reason']}" if a["cleared"] else "still open at the end")
        )
        for e in a["evidence"]:
            words = ", ".join(f"{w} ({s:+.3f})" for w, s in e["top_tokens"])
            lines.append(f"  - {e['text'][:120]!r}: {e['label']} {e['probability']:.2f}; words: {words}")
    return lines


def _scored(v: dict[str, Any], key: str) -> str:
    return "not scored" if v[key] is None else f"{v[key]:.4f}"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}".rstrip("0").rstrip(".") if isinstance(x, float) else str(x)


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def _q(values: list[float], q: float) -> float | None:
    return _r(values[min(len(values) - 1, int(q * len(values)))]) if values else None
