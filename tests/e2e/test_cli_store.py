"""The `llmk store` command as a user runs it: a real subprocess, LLMK_HOME in a temporary folder,
--json output parsed. A failure prints exactly one line to stderr and exits with its class's code.

Every command pays for importing torch, so commands that do not depend on each other run side by
side (`batch`), and one scenario covers the whole life of a model.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.store.adapters.importers import load_source

BIN = Path(sys.executable).with_name("llmk")
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "llmk.cli.main"]
UP0 = "model.layers.0.mlp.up_proj.weight"
EMBED = "model.embed_tokens.weight"
OK = 0
pytestmark = pytest.mark.timeout(600)


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")}
    return {**env, "LLMK_HOME": str(home), "HF_HUB_OFFLINE": "1", **extra}


def batch(env: dict[str, str], *commands: tuple[int, tuple[str, ...]]) -> list:
    """Run (expected exit code, args) commands side by side. A success returns its parsed --json
    output; a failure must print exactly one line to stderr, which it returns."""
    argvs = [[*COMMAND, *args, *(["--json"] if code == OK else [])] for code, args in commands]
    procs = [
        subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv in argvs
    ]
    results = []
    for (code, args), p in zip(commands, procs, strict=True):
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == code, f"llmk {' '.join(args)}: exit {p.returncode}, stderr {stderr!r}"
        if code == OK:
            results.append(json.loads(stdout))
            continue
        lines = stderr.splitlines()
        assert len(lines) == 1, f"stderr was {stderr!r}"
        assert lines[0].startswith("llmk: error: "), f"stderr was {stderr!r}"
        results.append(lines[0])
    return results


def ok(env: dict[str, str], *args: str) -> Any:
    """The parsed --json output of one command that must succeed."""
    return batch(env, (OK, args))[0]


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    bits = torch.int32  # every llama-tiny tensor is float32
    return sorted(a) == sorted(b) and all(torch.equal(a[n].view(bits), b[n].view(bits)) for n in a)


def aged_junk_object(home: Path) -> Path:
    """An object file nothing references, as a crashed writer leaves, older than the grace period."""
    junk = home / "objects" / "ff" / ("0" * 62)
    junk.parent.mkdir(exist_ok=True)
    junk.write_bytes(b"left by a crashed writer")
    old = time.time() - 7200
    os.utime(junk, (old, old))
    return junk


def corrupt_every_object(home: Path) -> None:
    for obj in (home / "objects").glob("??/*"):
        with open(obj, "r+b") as f:
            f.seek(obj.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))


def test_the_life_of_a_model_from_the_shell(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = cli_env(home)
    original = load_source("synthetic:llama-tiny").tensors
    imported = ok(env, "store", "import", "synthetic:llama-tiny", "--model", "tiny")
    assert imported["model"] == "tiny"
    assert imported["version"] == 1
    assert imported["tensors"] == len(original)

    exported = tmp_path / "v1.safetensors"
    assert ok(env, "store", "export", "tiny", "--out", str(exported))["tensors"] == len(original)
    tuned = load_file(str(exported))
    assert same_bits(tuned, original)
    tuned[UP0].view(-1)[:8000:200] += 0.125  # 40 values in 40 rows: cheapest as values
    tuned[EMBED][42] = 0.5  # one whole row
    modified = tmp_path / "tuned.safetensors"
    save_file(tuned, str(modified))
    malformed = tmp_path / "malformed.safetensors"
    malformed.write_bytes(b"\xff" * 8 + b"{}")
    commit = ("store", "commit", "tiny", "--from")

    committed = ok(env, *commit, str(modified), "--message", "tuned")
    assert (committed["version"], committed["parent"]) == (2, 1)
    kinds = {e["name"]: (e["kind"], e["nnz"]) for e in committed["entries"]}
    assert kinds == {UP0: ("sparse_set", 40), EMBED: ("rows_set", 64)}

    second = tmp_path / "v2.safetensors"
    log, diff, stats, _, *errors = batch(
        env,
        (OK, ("store", "log", "tiny")),
        (OK, ("store", "diff", "tiny@1", "tiny@2")),
        (OK, ("store", "stats", "tiny")),
        (OK, ("store", "export", "tiny@2", "--out", str(second))),
        (3, ("store", "log", "nope")),
        (3, ("store", "export", "tiny@99", "--out", str(tmp_path / "x.safetensors"))),
        (3, (*commit, str(tmp_path / "missing.safetensors"))),
        (2, (*commit, str(malformed))),
        (2, ("store", "diff", "tiny@1", "other@1")),
        (4, ("store", "import", "synthetic:llama-tiny", "--model", "tiny")),
        (5, (*commit, str(original_file(tmp_path, original)), "--parent", "1")),
    )
    assert [(v["id"], v["parent"], v["message"]) for v in log] == [
        (2, 1, "tuned"),
        (1, None, "import synthetic:llama-tiny"),
    ]
    changes = {c["name"]: c for c in diff}
    assert sorted(changes) == [EMBED, UP0]
    assert (changes[UP0]["kind"], changes[UP0]["nnz"]) == ("sparse_set", 40)
    assert changes[UP0]["norm"] == pytest.approx(0.125 * 40**0.5, rel=1e-3)
    per_version = {s["version"]: s for s in stats["versions"]}
    assert per_version[2]["stored_bytes"] < per_version[1]["stored_bytes"] / 100
    assert stats["ratio"] < 0.6
    assert same_bits(load_file(str(second)), tuned)
    assert "unknown model 'nope'" in errors[0]
    assert "exceeds" in errors[3]
    assert "moved" in errors[6]
    assert not (tmp_path / "x.safetensors").exists()

    rolled = ok(env, "store", "rollback", "tiny", "--to", "1")
    assert (rolled["version"], rolled["restores"]) == (3, 1)
    squashed = ok(env, "store", "squash", "tiny@main")
    assert (squashed["version"], squashed["squashed"], squashed["tensors"]) == (4, 3, len(original))

    junk = aged_junk_object(home)
    restored = tmp_path / "restored.safetensors"
    _, log, frozen, dry_run = batch(
        env,
        (OK, ("store", "export", "tiny", "--out", str(restored))),
        (OK, ("store", "log", "tiny")),
        (OK, ("store", "freeze", "tiny", "model.layers.0", "*.embed_tokens.*")),
        (OK, ("store", "gc", "--dry-run")),
    )
    assert same_bits(load_file(str(restored)), original)
    assert [v["id"] for v in log] == [4, 3, 2, 1], "failures wrote nothing; rollback and squash add history"
    assert frozen["frozen"] == ["*.embed_tokens.*", "model.layers.0"]
    assert dry_run == {"removed": ["ff" + "0" * 62], "count": 1, "dry_run": True}
    assert junk.exists()

    refused = batch(env, (6, (*commit, str(modified))))[0]
    assert UP0 in refused
    assert EMBED in refused
    collected, log = batch(env, (OK, ("store", "gc")), (OK, ("store", "log", "tiny")))
    assert collected["count"] == 1
    assert not junk.exists()
    assert [v["id"] for v in log] == [4, 3, 2, 1], "the frozen commit wrote nothing"

    corrupt_every_object(home)
    damaged = batch(env, (7, ("store", "export", "tiny", "--out", str(tmp_path / "y.safetensors"))))[0]
    assert "checksum" in damaged
    assert not list(tmp_path.glob("y.safetensors*"))


def original_file(tmp_path: Path, original: dict[str, torch.Tensor]) -> Path:
    """Values computed against version 1 with one change: committing them on --parent 1 is stale later."""
    path = tmp_path / "from-v1.safetensors"
    changed = {n: t.clone() for n, t in original.items()}
    changed[UP0][0, 0] += 1
    save_file(changed, str(path))
    return path


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_the_same_commands_reach_a_store_service(settings, grpc_server, tmp_path: Path) -> None:
    served = grpc_server(settings.model_copy(update={"auth_token": "s3cret"}))
    env = cli_env(tmp_path / "client-home", LLMK_STORE_ADDRESS=served.address, LLMK_AUTH_TOKEN="s3cret")
    assert ok(env, "store", "import", "synthetic:llama-tiny", "--model", "tiny")["version"] == 1
    anonymous = {**env, "LLMK_AUTH_TOKEN": ""}
    log, denied = batch(anonymous, (OK, ("store", "log", "tiny")), (8, ("store", "freeze", "tiny", "model")))
    assert [v["id"] for v in log] == [1]
    assert "authorization" in denied
    assert served.client.model("tiny").frozen == []
    assert not list((tmp_path / "client-home").rglob("*.db")), "the client kept no store of its own"


def test_frozen_means_no_version_changes_it(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    ok(env, "store", "import", "synthetic:llama-tiny", "--model", "tiny")
    tuned = load_source("synthetic:llama-tiny").tensors
    tuned[UP0][0, 0] += 1
    save_file(tuned, str(tmp_path / "tuned.safetensors"))
    ok(env, "store", "commit", "tiny", "--from", str(tmp_path / "tuned.safetensors"))
    frozen, unmatched = batch(
        env,
        (OK, ("store", "freeze", "tiny", "model.layers.0.mlp")),
        (2, ("store", "freeze", "tiny", "model.layers.99")),
    )
    assert frozen["frozen"] == ["model.layers.0.mlp"]
    assert "match no tensor" in unmatched
    refused = batch(env, (6, ("store", "rollback", "tiny", "--to", "1")))[0]
    assert UP0 in refused
    assert "--force-frozen" in refused
    forced = ok(env, "store", "rollback", "tiny", "--to", "1", "--force-frozen")
    assert (forced["version"], forced["restores"]) == (3, 1)
    assert ok(env, "store", "unfreeze", "tiny", "model.layers.0.mlp")["frozen"] == []


def test_long_store_commands_say_what_they_do_on_a_terminal_only(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    argv = [*COMMAND, "store", "import", "synthetic:llama-tiny", "-m", "seen", "--json"]
    master, terminal = pty.openpty()  # standard error on a terminal, as a person runs it
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=terminal)
    os.close(terminal)  # the child holds the only other end now: reading ends when it exits
    shown = b""
    try:
        while True:  # read while it runs, so a full terminal buffer never blocks the command
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end is closed: all of it was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert p.wait(300) == OK
    assert json.loads(out.read_text())["model"] == "seen", "the result on standard output stays plain JSON"
    assert b"reading synthetic:llama-tiny" in shown
    assert b"storing" in shown
    piped = subprocess.run(
        [*argv[:-2], "quiet", "--json"], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    assert piped.returncode == OK
    assert piped.stderr == "", "no spinner or progress text when standard error is not a terminal"
