"""Bad files and full disks from the shell: one line on stderr, the class's exit code, nothing half-written
or left behind."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmk.errors import InvalidInput, NoSpace, NotFound

try:  # tests/e2e as a package or as a folder on sys.path
    from .test_cli_store import COMMAND, OK, batch, cli_env, ok
except ImportError:
    from test_cli_store import COMMAND, OK, batch, cli_env, ok  # type: ignore[no-redef]

pytestmark = pytest.mark.timeout(600)
EMBED = "model.embed_tokens.weight"

GARBAGE_GGUF = {
    "random bytes": bytes(range(256)) * 8,
    "magic only": b"GGUF",
    "empty": b"",
    "bad version": b"GGUF" + struct.pack("<IQQ", 99, 0, 0),
    "no tensors": b"GGUF" + struct.pack("<IQQ", 3, 0, 0),
    "a count beyond the file": b"GGUF" + struct.pack("<IQQ", 3, 2**60, 1),
    "a string beyond the file": b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**40) + b"key",
}


def test_every_garbage_gguf_is_one_invalid_input_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    commands = []
    for i, data in enumerate(GARBAGE_GGUF.values()):
        (tmp_path / f"g{i}.gguf").write_bytes(data)
        commands.append(
            (InvalidInput.exit_code, ("store", "import", str(tmp_path / f"g{i}.gguf"), "-m", f"m{i}"))
        )
    lines = batch(env, *commands)
    assert all("GGUF" in line for line in lines), lines
    assert ok(env, "store", "models") == []


def test_export_into_a_missing_folder_or_onto_a_folder_is_one_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "home")
    ok(env, "store", "import", "synthetic:llama-tiny", "--model", "tiny")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    missing, onto = batch(
        env,
        (NotFound.exit_code, ("store", "export", "tiny", "--out", str(tmp_path / "nope" / "x.safetensors"))),
        (InvalidInput.exit_code, ("store", "export", "tiny", "--out", str(folder))),
    )
    assert "does not exist" in missing
    assert "is a folder" in onto
    assert not list(tmp_path.rglob("*.partial"))
    assert list(folder.iterdir()) == []


FULL_DISK = """
set -e
mount -t tmpfs -o size={size} tmpfs "{full}"
cp -a "{objects}/." "{full}/"
export LLMK_OBJECT_DIR="{full}"
set +e
{llmk} store commit tiny --from "{change}" 2> "{out}/commit.err"; echo $? > "{out}/commit.rc"
LLMK_CACHE_CHAIN_LENGTH=1 {llmk} store export tiny --out "{out}/read.safetensors" 2> "{out}/read.err"
echo $? > "{out}/read.rc"
find "{full}" -type f | sed "s|{full}/||" | sort > "{out}/files"
"""


def test_a_full_disk_on_commit_is_one_line_and_reads_go_on(tmp_path: Path) -> None:
    """A real full disk: a tmpfs with little room over the object folder, in a private mount namespace."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], check=False).returncode:
        pytest.skip("needs unshare and user namespaces to mount a small tmpfs")
    home, out, full = tmp_path / "home", tmp_path / "out", tmp_path / "full"
    out.mkdir()
    full.mkdir()
    env = cli_env(home)
    ok(env, "store", "import", "synthetic:llama-tiny", "--model", "tiny")
    before = ok(env, "store", "log", "tiny")
    objects = sorted(
        str(p.relative_to(home / "objects")) for p in (home / "objects").rglob("*") if p.is_file()
    )
    used = sum(p.stat().st_size for p in (home / "objects").rglob("*") if p.is_file())
    change = tmp_path / "change.safetensors"
    save_file({EMBED: torch.randn(49152, 64)}, str(change))  # a 12.6 MB new value: it cannot fit
    script = FULL_DISK.format(
        size=used + (1 << 20),
        full=full,
        objects=home / "objects",
        llmk=" ".join(COMMAND),
        change=change,
        out=out,
    )
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, check=True, timeout=300)

    err = (out / "commit.err").read_text()
    assert (out / "commit.rc").read_text().strip() == str(NoSpace.exit_code), err
    assert len(err.splitlines()) == 1, err
    assert "no space" in err, err
    assert (out / "read.rc").read_text().strip() == str(OK), (out / "read.err").read_text()
    assert (out / "files").read_text().split() == objects, "nothing half-written, no temp file left"
    assert ok(env, "store", "log", "tiny") == before
