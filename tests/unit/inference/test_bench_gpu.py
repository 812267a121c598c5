"""bench/gpu.sh waits for a GPU that most sessions never get: its Python part must keep working on the CPU,
so the one call on a lent H200 is not spent on a crash."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import bench_gpu


def test_the_gpu_bench_runs_end_to_end_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--preset", "tiny", "--batches", "1,2", "--classify-batch", "8"]
    args += ["--classify-items", "4", "--versions", "2", "--copy-bytes", str(1 << 20), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["bench_gpu", *args])  # fewer items than a batch: one short batch
    bench_gpu.main()
    rows = {r["metric"].split(",")[0]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"decode", "classify", "hot apply"}
    decode = [r for r in json.loads(out.read_text())["rows"] if r["metric"].startswith("decode")]
    assert [r["metric"].split(",")[1].strip() for r in decode] == ["batch 1", "batch 2"]
    assert all(r["value"] > 0 and r["ratio"] > 0 for r in decode)
    assert rows["classify"]["value"] > 0
    assert rows["hot apply"]["value"] > 0
