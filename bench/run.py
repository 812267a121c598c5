"""`make bench`: every benchmark in turn, then the README table."""

from __future__ import annotations

import importlib
import sys

from bench import report

BENCHES = [
    "bench.bench_store",
    "bench.bench_inference",
    "bench.bench_peers",
    "bench.bench_host",
    "bench.bench_load",
    "bench.bench_compress",
    "bench.bench_optimizer",
    "bench.bench_monitor",
    "bench.bench_hot_apply",
]


def main() -> None:
    only = sys.argv[1:]
    for name in BENCHES:
        if only and not any(o in name for o in only):
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            print(f"skip {name}: {e}")
            continue
        print(f"== {name}")
        module.main()
    report.main()


if __name__ == "__main__":
    main()
