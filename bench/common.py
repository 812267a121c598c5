"""Shared bench helpers: timing, result files, and the README table built from them."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results")


def best_of(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Median seconds of `repeat` runs: the machine is shared, so one run proves little."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write(name: str, rows: list[dict[str, Any]], command: str, folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.json"
    payload = {
        "bench": name,
        "command": command,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "rows": rows,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    for r in rows:
        print(
            f"  {r['metric']}: {r['value']:.4g} {r.get('unit', '')}   (baseline {r.get('baseline', '-')}; "
            f"ratio {r.get('ratio', '-')}; goal {r.get('goal', '-')})"
        )
    return out


def touch_all(tensors: dict[str, Any]) -> float:
    """Read every byte of every tensor (a sum), so lazy loading cannot flatter a result."""
    return float(sum(float(t.float().sum()) for t in tensors.values()))
