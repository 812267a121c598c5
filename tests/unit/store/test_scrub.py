"""Corruption in place is never served: a byte flipped inside an object file with its mtime set back (as
`touch -r` does) is caught on the next read, and `llmk store scrub` re-hashes every object, quarantines the
damaged ones and exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmk.adapters.importers import load_source
from llmk.app.store import CommitInfo, Store
from llmk.errors import Corrupt
from llmk.wiring import open_store
from tests.conftest import make_settings

LLMK = [str(Path(sys.executable).with_name("llmk"))]


def flip_in_place(path: Path) -> None:
    """Change one byte in the middle of the file and restore its times, as an attacker or a bad disk might."""
    st = path.stat()
    with path.open("r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = open_store(make_settings(tmp_path / "home"))
    tiny = load_source("synthetic:llama-tiny")
    s.create_model("tiny", tiny.tensors, tiny.config, tiny.files, CommitInfo())
    s.materialize("tiny", "main")  # verified once: the cache would answer next time
    return s


def test_a_byte_flipped_in_place_with_its_mtime_restored_is_refused(store: Store) -> None:
    [sha] = {e.object for e in store.version("tiny", "main").entries}
    flip_in_place(store.objects.verify(sha))
    with pytest.raises(Corrupt, match="failed its checksum"):
        store.materialize("tiny", "main")


def test_scrub_quarantines_damaged_objects_and_exits_non_zero(store: Store, tmp_path: Path) -> None:
    [sha] = {e.object for e in store.version("tiny", "main").entries}
    assert store.scrub() == []
    flip_in_place(store.objects.verify(sha))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMK_")} | {
        "LLMK_HOME": str(tmp_path / "home")
    }
    done = subprocess.run([*LLMK, "store", "scrub"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 7 and done.stderr.strip().startswith("llmk: error: 1 damaged object(s)")
    assert (tmp_path / "home" / "objects" / "quarantine" / sha).exists()
    with pytest.raises(Corrupt, match="missing"):
        store.materialize("tiny", "main")
