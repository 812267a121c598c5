"""PNG charts of a demo report (matplotlib, drawn off-screen)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any


def draw(out: Path, report: dict[str, Any], throughput: list[tuple[float, int]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    versions = [v for v in report["versions"] if v["macro_f1"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [v["served_at_s"] for v in versions]
    ax.plot(xs, [v["macro_f1"] for v in versions], "o-", label="macro-F1")
    ax.plot(xs, [v["accuracy"] for v in versions], "s--", label="accuracy")
    if report["zero_shot_macro_f1"] is not None:
        ax.axhline(report["zero_shot_macro_f1"], color="grey", lw=0.8, label="zero-shot macro-F1")
    for v in versions:
        ax.annotate(str(v["version"]), (v["served_at_s"], v["macro_f1"]), fontsize=7)
    ax.set(xlabel="seconds since start (version first served)", ylabel="held-out score", ylim=(0, 1))
    ax.set_title("Held-out sentiment scores of each served version")
    ax.legend()
    written.append(_save(fig, out / "f1.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    rates = [(t1, (n1 - n0) / (t1 - t0)) for (t0, n0), (t1, n1) in itertools.pairwise(throughput) if t1 > t0]
    ax.plot([t for t, _ in rates], [r for _, r in rates])
    for v in report["versions"][1:]:
        ax.axvline(v["served_at_s"], color="grey", lw=0.5, ls=":")
    ax.set(xlabel="seconds since start (dotted: a new version served)", ylabel="items scored per second")
    ax.set_title("Monitor throughput while versions are hot-applied")
    written.append(_save(fig, out / "throughput.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    shown = report["versions"]
    ax.bar([str(v["version"]) for v in shown], [v["bytes_stored"] / 2**20 for v in shown], label="stored")
    ax.plot(
        [str(v["version"]) for v in shown],
        [v["bytes_full_copy"] / 2**20 for v in shown],
        "r_",
        ms=20,
        label="a full copy",
    )
    ax.set(xlabel="version", ylabel="MiB", yscale="log")
    ax.set_title("Bytes stored per served version against a full copy")
    ax.legend()
    written.append(_save(fig, out / "bytes.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
