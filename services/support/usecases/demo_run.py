"""`llmk demo support`'s records: each customer message through the API with the feedback on its reply, the
run they make up, and the report built from them (figures only; services.support.adapters.demo_report writes
it)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Exchange:
    """One customer message through the API and the feedback on its reply."""

    index: int
    version: int
    started: float  # unix seconds
    first_token_s: float | None
    seconds: float
    completion_tokens: int
    rouge_l: float
    rating: str
    examples: int  # rated replies the feedback gave the job: 1 (thumbs-up) or 2 (down + correction)
    feedback_sent: float  # unix seconds


@dataclass
class Run:
    exchanges: list[Exchange]
    probes: list[Exchange]  # streamed while training caught up, without feedback
    served: dict[int, float]  # version -> unix time the gateway first answered with it
    job: dict[str, Any]
    commits: list[dict[str, Any]]
    stored: dict[int, tuple[int, int]]
    created: dict[int, float]  # version -> unix time committed
    traffic_seconds: float
    served_at_end: int
    unsettled: str


def build_report(
    setup: dict[str, Any],
    zero: dict[str, Any],
    final: dict[str, Any],
    baselines: dict[str, dict[str, float]],
    run: Run,
    wall: float,
) -> dict[str, Any]:
    drop = (zero["nll_per_token"] - final["nll_per_token"]) / zero["nll_per_token"]
    versions = _versions(run, zero, final)
    ex = run.exchanges
    ttft = [e.first_token_s for e in ex if e.first_token_s is not None]
    tokens = sum(e.completion_tokens for e in ex)
    traffic = {
        "requests": len(ex),
        "thumbs_up": sum(e.rating == "up" for e in ex),
        "corrections": sum(e.rating == "down" for e in ex),
        "completion_tokens": tokens,
        "seconds": round(run.traffic_seconds, 1),
        "tokens_per_s": round(tokens / max(run.traffic_seconds, 1e-9), 2),
        "stream_tokens_per_s_mean": round(statistics.fmean(_rates(ex)), 2) if ex else None,
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p90_s": round(_quantile(ttft, 0.9), 3) if ttft else None,
    }
    intents = {
        "zero_shot_accuracy": zero["intent_accuracy"],
        "final_accuracy": final["intent_accuracy"],
        "tfidf_lr_accuracy": baselines["tfidf_lr"]["accuracy"],
        "linear_probe_accuracy": baselines.get("linear_probe", {}).get("accuracy"),
        "goal": 0.8,
    }
    goals = {
        "nll_drop_at_least_15_percent": drop >= 0.15,
        "conversations_at_most_1000": setup["splits"]["conversations"] <= 1000,
        "intent_accuracy_at_least_0_80": final["intent_accuracy"] >= 0.8,
        "under_10_minutes": wall < 600,
    }
    latencies = [v["feedback_to_served_s"] for v in versions if v.get("feedback_to_served_s") is not None]
    headline = {
        "zero_shot_nll_per_token": zero["nll_per_token"],
        "final_nll_per_token": final["nll_per_token"],
        "nll_drop": round(drop, 4),
        "zero_shot_rouge_l": zero["rouge_l"],
        "final_rouge_l": final["rouge_l"],
        "zero_shot_intent_accuracy": zero["intent_accuracy"],
        "final_intent_accuracy": final["intent_accuracy"],
        "tfidf_lr_intent_accuracy": baselines["tfidf_lr"]["accuracy"],
        "versions_served": len(run.served),
        "served_at_end": run.served_at_end,
        "feedback_to_served_p50_s": round(statistics.median(latencies), 1) if latencies else None,
        "tokens_per_s": traffic["tokens_per_s"],
        "ttft_p50_s": traffic["ttft_p50_s"],
        "wall_seconds": round(wall, 1),
    }
    return {
        "headline": headline,
        "setup": setup,
        "zero_shot": zero,
        "final": final,
        "nll_drop": round(drop, 4),
        "intents": intents,
        "intent_baselines": baselines,
        "traffic": traffic,
        "versions": versions,
        "job": run.job,
        "commits": run.commits,
        "exchanges": [asdict(e) for e in ex],
        "probes": [asdict(e) for e in run.probes],
        "goals": goals,
        "wall_seconds": round(wall, 1),
        "unsettled": run.unsettled or None,
    }


def _versions(run: Run, zero: dict[str, Any], final: dict[str, Any]) -> list[dict[str, Any]]:
    """Every version the gateway served: its gate figure, bytes, latencies and serving figures."""
    commits = {c["version"]: c for c in run.commits if c["version"] is not None}
    sent: list[float] = []  # the send time of each rated reply the job received, in order
    for e in sorted(run.exchanges, key=lambda e: e.feedback_sent):
        sent += [e.feedback_sent] * e.examples
    batch = int(run.job.get("batch_size", 0)) or 1
    first_request = min((e.started for e in run.exchanges), default=min(run.served.values(), default=0.0))
    out = []
    for version in sorted(run.served):
        commit = commits.get(version)
        stored, full = run.stored.get(version, (0, 0))
        answered = [e for e in run.exchanges + run.probes if e.version == version]
        ttft = [e.first_token_s for e in answered if e.first_token_s is not None]
        row: dict[str, Any] = {
            "version": version,
            "served_after_s": round(run.served[version] - first_request, 1),  # < 0: before the traffic
            "dev_nll_per_token": None
            if commit is None or commit["metric"] is None
            else round(-commit["metric"], 4),
            "stored_bytes": stored,
            "full_copy_bytes": full,
            "bytes_ratio": round(stored / full, 5) if full else None,
            "requests": len(answered),
            "stream_tokens_per_s": round(statistics.fmean(_rates(answered)), 2) if answered else None,
            "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
            "feedback_to_served_s": None,
            "commit_to_served_s": None,
        }
        if commit is not None:
            needed = commit["step"] * batch  # the rated reply that completed the version's last batch
            if 0 < needed <= len(sent):
                row["feedback_to_served_s"] = round(run.served[version] - sent[needed - 1], 1)
            if version in run.created:
                row["commit_to_served_s"] = round(run.served[version] - run.created[version], 2)
        if version == zero["version"]:
            row["held_out"] = zero
        elif version == final["version"]:
            row["held_out"] = final
        out.append(row)
    return out


def _rates(exchanges: list[Exchange]) -> list[float]:
    return [e.completion_tokens / e.seconds for e in exchanges if e.seconds > 0]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
