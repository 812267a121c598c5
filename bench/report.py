"""Regenerate the README's performance table from bench/results/*.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.common import RESULTS

README = Path(__file__).resolve().parent.parent / "README.md"


def table() -> str:
    lines = ["| benchmark | figure | baseline (same run) | ratio | goal |", "|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        for r in data.get("rows", []):  # tuning logs (rec-tuning*.json) have no rows of figures
            lines.append(
                f"| {data['bench']}: {r['metric']} | {r['value']:.4g} {r.get('unit', '')} | "
                f"{r.get('baseline', '')} | {r.get('ratio', '')} | {verdict(r)} |"
            )
    return "\n".join(lines)


def verdict(row: dict) -> str:
    """The goal with whether this run met it, where the goal is a bound on the ratio or on a p50 time."""
    goal = str(row.get("goal", ""))
    if "met" in goal or "missed" in goal:
        return goal
    if m := re.fullmatch(r">=\s*([\d.]+)(x?)", goal.strip()):
        field = "ratio" if m.group(2) else "value"  # ">= 1.0x" bounds the ratio, ">= 500" the figure itself
        if isinstance(row.get(field), int | float):
            return f"{goal}: {'met' if row[field] >= float(m.group(1)) else 'missed'}"
    if (m := re.match(r"(?:p50 )?< ([\d.]+) ms", goal.strip())) and row.get("unit") == "ms":
        return f"{goal}: {'met' if row['value'] < float(m.group(1)) else 'missed'}"
    if (m := re.fullmatch(r"<=\s*([\d.]+)", goal.strip())) and isinstance(row.get("value"), int | float):
        return f"{goal}: {'met' if row['value'] <= float(m.group(1)) else 'missed'}"
    return goal


def main() -> None:
    text = README.read_text()
    new = re.sub(
        r"<!-- bench:start -->.*<!-- bench:end -->",
        f"<!-- bench:start -->\n{table()}\n<!-- bench:end -->",
        text,
        flags=re.S,
    )
    README.write_text(new)
    print(table())


if __name__ == "__main__":
    main()
