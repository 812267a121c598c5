"""`store export --out` writes only a regular file: a device, a pipe or a socket named by --out is refused
before anything is written, instead of being replaced by the exported file (as root, even /dev/full)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from llmk.errors import InvalidInput
from services.store.usecases.exports import write


def test_an_out_that_is_a_device_is_refused_and_left_alone(tmp_path: Path) -> None:
    device = tmp_path / "full"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # what /dev/full is
    with pytest.raises(InvalidInput, match="not a regular file"):
        write({"w": torch.ones(2)}, device, "m", 1, "")
    assert stat.S_ISCHR(device.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_an_out_that_is_a_pipe_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InvalidInput, match="not a regular file"):
        write({"w": torch.ones(2)}, tmp_path / "pipe", "m", 1, "")
    assert stat.S_ISFIFO((tmp_path / "pipe").lstat().st_mode)


def test_an_existing_regular_file_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "m.safetensors").write_bytes(b"old")
    assert write({"w": torch.ones(2)}, tmp_path / "m.safetensors", "m", 1, "") == 1
    assert (tmp_path / "m.safetensors").read_bytes() != b"old"
