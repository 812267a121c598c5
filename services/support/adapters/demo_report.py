"""The customer-service demo's report: report.json, report.md and PNG charts (matplotlib, off-screen).

Charts draw lines only between measured points: a version the gate never scored (the imported one has no
dev figure of its own) is a gap, not an interpolated point. Every axis is labelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHARTS = ("replies.png", "serving.png", "bytes.png", "intents.png")


def write(out: Path, report: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "report.md").write_text(markdown(report))
    import matplotlib

    matplotlib.use("Agg")
    return [_replies(out, report), _serving(out, report), _bytes(out, report), _intents(out, report)]


def markdown(r: dict[str, Any]) -> str:
    z, f, s, t = r["zero_shot"], r["final"], r["setup"], r["traffic"]
    sp = s["splits"]
    goals = ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in r["goals"].items())
    lines = [
        "# llmk customer service: demo report",
        "",
        f"Model source `{s['source']}`; {sp['conversations']} training conversations through the API "
        f"({t['thumbs_up']} thumbs-up, {t['corrections']} corrections with the agent's reference reply), "
        f"replies job gated on {sp['dev']} dev rows carved from training data; measured on {sp['held_out']} "
        f"held-out conversations (ROUGE-L on the first {s['generate']} greedy replies, at most "
        f"{s['max_tokens']} tokens) and {sp['intent_held_out']} held-out banking77 messages.",
        "",
        "| version | held-out NLL/token | ROUGE-L | intent accuracy |",
        "|---|---|---|---|",
        f"| {z['version']} (zero-shot) | {z['nll_per_token']} | {z['rouge_l']} | {z['intent_accuracy']} |",
        f"| {f['version']} (served at the end) | {f['nll_per_token']} | {f['rouge_l']} "
        f"| {f['intent_accuracy']} |",
        "",
        f"Held-out NLL per token fell by {100 * r['nll_drop']:.1f}% (goal: 15%).",
        "",
        f"Intents ({sp['intent_train']} banking77 training rows for the baselines): TF-IDF + logistic "
        f"regression {r['intents']['tfidf_lr_accuracy']}, linear probe on the imported model's features "
        f"{_or(r['intents']['linear_probe_accuracy'])} (`--probe`), the served model's intent routing "
        f"{r['intents']['zero_shot_accuracy']} zero-shot and {r['intents']['final_accuracy']} at the end "
        "(goal 0.80). The replies job does not train intents.",
        "",
        f"Goals: {goals}. Whole run {r['wall_seconds']} s, {r.get('cpu_seconds')} CPU-seconds in this "
        f"process on {r.get('cpu_count')} cores; load average {r.get('load_average')} (start, end).",
        "",
        "## Serving",
        "",
        f"{t['requests']} streamed requests ({s['clients']} concurrent `openai` clients) in "
        f"{t['seconds']} s: "
        f"{t['completion_tokens']} completion tokens, {t['tokens_per_s']} tokens/s in all, "
        f"{t['stream_tokens_per_s_mean']} tokens/s per stream on average; time to first token p50 "
        f"{t['ttft_p50_s']} s, p90 {t['ttft_p90_s']} s. While training caught up, one client kept streaming "
        f"dev messages without feedback ({len(r.get('probes', []))} requests), so the versions below were "
        "measured as they were hot-applied.",
        "",
        "| version | served at (s after the first request) | dev NLL/token | bytes stored | full copy "
        "| ratio | feedback to served (s) | commit to served (s) | requests | tokens/s per stream "
        "| TTFT p50 (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {v['version']} | {v['served_after_s']} | {_or(v['dev_nll_per_token'])} | {v['stored_bytes']:,} "
        f"| {v['full_copy_bytes']:,} | {_or(v['bytes_ratio'])} | {_or(v['feedback_to_served_s'])} "
        f"| {_or(v['commit_to_served_s'])} | {v['requests']} | {_or(v['stream_tokens_per_s'])} "
        f"| {_or(v['ttft_p50_s'])} |"
        for v in r["versions"]
    ]
    lines += [
        "",
        "Feedback to served: from sending the rated reply that completed a version's last training batch "
        "to the gateway first answering with that version. Dev NLL: the job's gate figure (the imported "
        "version's is the job's baseline).",
        "",
        f"Commits: {len(r['commits'])} ({sum(c['promoted'] for c in r['commits'])} promoted).",
        *[f"- version {c['version']} held back: {c['reason']}" for c in r["commits"] if not c["promoted"]],
        "",
        "## Setup",
        "",
        "```json",
        json.dumps(s, indent=2),
        "```",
        "",
    ]
    if r.get("unsettled"):
        lines += [f"**Not finished:** {r['unsettled']}", ""]
    return "\n".join(lines)


def _or(value: Any) -> str:
    return "-" if value is None else str(value)


def _replies(out: Path, r: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    dev = [
        (v["version"], v["dev_nll_per_token"]) for v in r["versions"] if v["dev_nll_per_token"] is not None
    ]
    baseline = r["job"].get("baseline_dev_logprob")
    if baseline is not None:
        dev = [(r["zero_shot"]["version"], -baseline), *dev]
    if dev:
        ax.plot([v for v, _ in dev], [x for _, x in dev], "o-", label="dev split (the job's gate)")
    held = [(m["version"], m["nll_per_token"]) for m in (r["zero_shot"], r["final"])]
    ax.plot([v for v, _ in held], [x for _, x in held], "s--", label="held-out conversations")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # versions are whole numbers
    ax.set_xlabel("served version")
    ax.set_ylabel("reference reply NLL per token (nats)")
    ax.set_title("Reply likelihood as feedback trains the served model")
    ax.legend()
    return _save(fig, out / "replies.png")


def _serving(out: Path, r: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    ex = r["exchanges"] + r.get("probes", [])
    start = min((e["started"] for e in ex), default=0.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    answered = [e for e in ex if e["first_token_s"] is not None]
    top.plot([e["started"] - start for e in answered], [e["first_token_s"] for e in answered], ".")
    top.set_ylabel("time to first token (s)")
    rated = [e for e in ex if e["seconds"] > 0]
    bottom.plot(
        [e["started"] - start for e in rated], [e["completion_tokens"] / e["seconds"] for e in rated], "."
    )
    bottom.set_ylabel("tokens/s of one stream")
    bottom.set_xlabel("seconds since the first request")
    for v in r["versions"]:  # where each new version started answering (seconds since the first request)
        if v["served_after_s"] > 0:
            for ax in (top, bottom):
                ax.axvline(v["served_after_s"], color="grey", linewidth=0.5)
    top.set_title("Streaming through the API (grey: a new version served)")
    return _save(fig, out / "serving.png")


def _bytes(out: Path, r: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    versions = [v for v in r["versions"] if v["stored_bytes"]]
    x = list(range(len(versions)))
    ax.bar([i - 0.2 for i in x], [v["stored_bytes"] for v in versions], width=0.4, label="stored")
    ax.bar([i + 0.2 for i in x], [v["full_copy_bytes"] for v in versions], width=0.4, label="full copy")
    ax.set_xticks(x, [str(v["version"]) for v in versions])
    ax.set_yscale("log")
    ax.set_xlabel("served version")
    ax.set_ylabel("bytes (log scale)")
    ax.set_title("Bytes per version against a full copy")
    ax.legend()
    return _save(fig, out / "bytes.png")


def _intents(out: Path, r: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    i = r["intents"]
    found = {
        "zero-shot model": i["zero_shot_accuracy"],
        "served at end": i["final_accuracy"],
        "TF-IDF + LR": i["tfidf_lr_accuracy"],
        "linear probe": i["linear_probe_accuracy"],
    }
    names = [n for n, v in found.items() if v is not None]
    values = [v for v in found.values() if v is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(names, values)
    ax.axhline(i["goal"], color="red", linestyle="--", label=f"goal {i['goal']}")
    ax.set_xlabel("classifier")
    ax.set_ylabel("banking77 held-out accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Intent routing (77 intents)")
    ax.legend()
    return _save(fig, out / "intents.png")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
