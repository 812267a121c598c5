"""`llmk store commit MODEL --from FILE`: the commit users type, timed against reading the file once.

Run by bench.bench_store (python -m bench.bench_store), on its model of SmolLM2's shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bench.bench_store import interleaved
from services.store.adapters.objects import read_safetensors
from services.store.usecases.store import Store


def commit_from_file(store: Store, home: Path, rounds: int = 3) -> list[dict[str, Any]]:
    """`llmk store commit m --from FILE` with 1% of every tensor changed at random positions, against reading
    the file once, alternately in the same run: in process (what the command does after it starts) and as
    the command itself (against starting the CLI that imports the same modules and does nothing)."""
    head = store.resolve("m")
    g = torch.Generator().manual_seed(5)
    changed = {}
    for name, t in store.fetch("m").items():
        flat = t.clone().view(-1)
        at = torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 100)]
        flat[at] += 1e-3
        changed[name] = flat.view(t.shape)
    path = home / "changed.safetensors"
    save_file(changed, str(path))
    del changed
    branch_names: list[str] = []

    def fresh_branch() -> str:
        branch_names.append(name := f"from-file-{len(branch_names)}")
        store.branch("m", name, str(head))
        return name

    env = {**os.environ, "LLMK_HOME": str(home), "HF_HUB_OFFLINE": "1"}

    def commit() -> None:
        store.commit_full("m", read_safetensors(path, 1 << 27), fresh_branch())

    def cli(*args: str) -> None:
        subprocess.run([sys.executable, *args], env=env, check=True, stdout=subprocess.DEVNULL)

    def cli_commit() -> None:
        cli(
            "-m",
            "llmk.cli.main",
            "store",
            "commit",
            "m",
            "--from",
            str(path),
            "--branch",
            fresh_branch(),
            "--json",
        )

    read_s, commit_s = interleaved([lambda: len(path.read_bytes()), commit], rounds)
    start_s, cli_s = interleaved([lambda: cli("-c", CLI_IMPORTS), cli_commit], rounds)
    exported = home / "committed.safetensors"
    store.export("m", branch_names[-1], exported, "")
    got, want = load_file(str(exported)), load_file(str(path))
    same = sorted(got) == sorted(want) and all(same_bits(got[n], want[n]) for n in want)
    mb = path.stat().st_size / 1e6
    return [
        {
            "metric": f"commit --from a {mb:.0f} MB file, 1% of every tensor changed, in process, latency",
            "value": commit_s * 1000,
            "unit": "ms",
            "baseline": f"reading the file once {read_s * 1000:.0f} ms; committed version equals the file "
            f"bit for bit: {same}",
            "ratio": round(commit_s / read_s, 2),
            "goal": "< 1500 ms",
        },
        {
            "metric": "llmk store commit m --from FILE (same change): the command's time beyond start-up",
            "value": (cli_s - start_s) * 1000,
            "unit": "ms",
            "baseline": f"the command's wall time {cli_s * 1000:.0f} ms; starting the CLI with the same "
            f"imports and doing nothing {start_s * 1000:.0f} ms",
            "ratio": round(cli_s / start_s, 2),
            "goal": "< 1500 ms",
        },
    ]


CLI_IMPORTS = (  # what the command imports before it does any work: start-up, not the commit
    "import llmk.cli.main, llmk.bootstrap, services.store.usecases.store, services.store.adapters.objects, "
    "services.store.adapters.catalog"
)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    bits = torch.uint8
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.view(-1).view(bits), b.view(-1).view(bits))
    )
