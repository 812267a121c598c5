"""PNG charts of `llmk demo rec`'s report (matplotlib, off-screen): lines join measured points only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.rec.usecases.demo_run import NAMES


def draw(out: Path, report: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    return [_ndcg(out, report), _bytes(out, report), _served(out, report)]


def _ndcg(out: Path, report: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    k = report["setup"]["k"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    points = report["timeline"]
    for name in report["systems"]:
        ax.plot(
            [p["day"] for p in points], [p[name] for p in points], "o-", ms=3, label=NAMES.get(name, name)
        )
    ax.set(
        xlabel="positives tested, in time order",
        ylabel=f"NDCG@{k} of the positives tested so far",
    )
    ax.set_title(f"Prequential NDCG@{k} of each system (a point every {report['setup']['checkpoint']} tests)")
    ax.legend(fontsize=8)
    return _save(fig, out / "ndcg.png")


def _bytes(out: Path, report: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    versions = report["versions"]
    b = report["bytes"]
    left.plot(
        [v["version"] for v in versions], [v["stored_bytes"] for v in versions], "o-", ms=2, label="stored"
    )
    left.plot(
        [v["version"] for v in versions],
        [v["touched_row_bytes"] for v in versions],
        "s-",
        ms=2,
        label="touched rows' values",
    )
    left.axhline(b["full_copy"], color="red", lw=1, label="a full copy")
    left.set(xlabel="version", ylabel="bytes (log scale)", yscale="log")
    left.set_title("Bytes of each streamed version")
    left.legend(fontsize=8)
    names = ["stored per version\n(mean)", "touched rows\n(mean)", "full copy"]
    values = [b["per_version_mean"], b["touched_rows_mean"], b["full_copy"]]
    bars = right.bar(names, values, color=["C0", "C1", "red"])
    right.bar_label(bars, [f"{v:,}" for v in values], fontsize=8)
    right.set(ylabel="bytes (log scale)", yscale="log", ylim=(1, max([*values, 1]) * 10))
    right.set_title("A version against a full copy")
    return _save(fig, out / "bytes.png")


def _served(out: Path, report: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    shown = [v for v in report["versions"] if v["wait_max"] is not None]
    xs = [v["committed_seconds"] for v in shown]
    ax.plot(xs, [v["wait_max"] for v in shown], "o-", ms=2, label="oldest interaction of the version")
    ax.plot(xs, [v["wait_p50"] for v in shown], "s-", ms=2, label="median interaction of the version")
    w = report["interaction_to_served_seconds"]
    ax.set(xlabel="seconds since the stream started (version committed)", ylabel="interaction to served (s)")
    ax.set_title(
        f"Interaction to served: p50 {w['p50']} s, p99 {w['p99']} s over {w['interactions']} interactions"
    )
    ax.legend(fontsize=8)
    return _save(fig, out / "served.png")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
