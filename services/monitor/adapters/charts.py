"""PNG charts of a demo report (matplotlib, drawn off-screen): measured points only, gaps left as gaps."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WINDOW = 5.0  # seconds per throughput point: one-second samples of a batched worker are mostly noise
GAP = 3.0  # seconds between samples beyond which the monitor recorded nothing: no line is drawn across
BASELINES = {"tfidf_lr": "TF-IDF + LR", "linear_probe": "linear probe", "dense": "dense fine-tune"}


def measured_runs(versions: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Runs of consecutive served versions that all have a figure: a line joins only within a run."""
    runs: list[list[dict[str, Any]]] = [[]]
    for v in versions:
        if v["macro_f1"] is None:
            runs.append([])
        else:
            runs[-1].append(v)
    return [run for run in runs if run]


def throughput_rates(samples: Sequence[tuple[float, int]]) -> list[tuple[float, float]]:
    """(window end, items per second) over whole windows of about WINDOW seconds; NaN marks a gap.

    A window closes once it spans WINDOW seconds; the last one, shorter, is left out (its rate would be
    an artifact of where the run stopped), and so is any stretch without samples for more than GAP."""
    out: list[tuple[float, float]] = []
    start = samples[0] if samples else None
    prev = start
    for t, n in samples[1:]:
        assert start is not None
        assert prev is not None
        if t - prev[0] > GAP:
            out.append((prev[0], math.nan))
            start = (t, n)
        elif t - start[0] >= WINDOW:
            out.append((t, (n - start[1]) / (t - start[0])))
            start = (t, n)
        prev = (t, n)
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def draw(out: Path, report: dict[str, Any], throughput: list[tuple[float, int]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    return [_f1(out, report), _throughput(out, report, throughput), _bytes(out, report)]


def _f1(out: Path, report: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, run in enumerate(measured_runs(report["versions"])):
        xs = [v["served_at_s"] for v in run]
        ax.plot(xs, [v["macro_f1"] for v in run], "o-", color="C0", label="macro-F1" if i == 0 else None)
        ax.plot(xs, [v["accuracy"] for v in run], "s--", color="C1", label="accuracy" if i == 0 else None)
        for v in run:
            ax.annotate(str(v["version"]), (v["served_at_s"], v["macro_f1"]), fontsize=7)
    for v in report["versions"]:
        if v["macro_f1"] is None:
            ax.axvline(v["served_at_s"], color="grey", lw=0.5, ls=":")
    for j, (key, b) in enumerate(report.get("baselines", {}).items()):
        ax.axhline(
            b["macro_f1"], color=f"C{j + 2}", lw=1, ls="-.", label=f"{BASELINES.get(key, key)} macro-F1"
        )
    if report["zero_shot_macro_f1"] is not None:
        ax.axhline(report["zero_shot_macro_f1"], color="grey", lw=0.8, label="zero-shot macro-F1")
    ax.set(
        xlabel="seconds since start (when the version was first served)", ylabel="held-out score", ylim=(0, 1)
    )
    ax.set_title("Held-out scores of each served version (dotted: served, not scored)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, out / "f1.png")


def _throughput(out: Path, report: dict[str, Any], samples: list[tuple[float, int]]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    rates = throughput_rates(samples)
    ax.plot([t for t, _ in rates], [r for _, r in rates], "o-", ms=3)
    for v in report["versions"][1:]:
        ax.axvline(v["served_at_s"], color="grey", lw=0.5, ls=":")
    ax.set(
        xlabel="seconds since start (dotted: a new version served; breaks: nothing scored)",
        ylabel=f"items scored per second ({WINDOW:.0f} s windows)",
    )
    ax.set_title("Monitor throughput while versions are hot-applied")
    return _save(fig, out / "throughput.png")


def _bytes(out: Path, report: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    shown = report["versions"]
    names = [str(v["version"]) for v in shown]
    bars = ax.bar(names, [max(1, v["bytes_stored"]) for v in shown], label="stored (object files)")
    ax.bar_label(bars, [human_bytes(v["bytes_stored"]) for v in shown], fontsize=7, rotation=90, padding=2)
    ax.plot(names, [v["bytes_full_copy"] for v in shown], "r_", ms=20, label="a full copy (tensor data)")
    top = max([v["bytes_full_copy"] for v in shown] + [v["bytes_stored"] for v in shown] + [1])
    ax.set(xlabel="served version", ylabel="bytes (log scale)", yscale="log", ylim=(1, top * 50))
    ax.set_title("Bytes stored per served version against a full copy")
    ax.legend(fontsize=7)
    return _save(fig, out / "bytes.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
