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
        for r in data["rows"]:
            lines.append(
                f"| {data['bench']}: {r['metric']} | {r['value']:.4g} {r.get('unit', '')} | "
                f"{r.get('baseline', '')} | {r.get('ratio', '')} | {r.get('goal', '')} |"
            )
    return "\n".join(lines)


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
