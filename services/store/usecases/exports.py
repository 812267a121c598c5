"""Writing a version to a safetensors file the user names: all of it or nothing, never a stray `.partial`."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from llmk.errors import InvalidInput, NoSpace, NotFound


def check_target(out: Path) -> None:
    """Refuse a path that cannot take the file before any tensor is read."""
    if out.is_dir():
        raise InvalidInput(f"--out {out} is a folder; name the file to write (e.g. {out / 'm.safetensors'})")
    if out.exists() and not out.is_file():  # renaming over a device or a pipe would replace it
        raise InvalidInput(f"--out {out} exists and is not a regular file (a device, a pipe or a socket)")
    if not out.parent.is_dir():
        raise NotFound(f"--out {out}: folder {out.parent} does not exist; create it first")


def write(tensors: Mapping[str, torch.Tensor], out: Path, model: str, version: int, selector: str) -> int:
    """Write under a temporary name first, then rename: a reader never sees half a file."""
    if not tensors:
        raise NotFound(f"no tensor of {model}@{version} matches {selector!r}")
    check_target(out)
    tmp = out.with_name(out.name + ".partial")
    try:
        save_file(dict(tensors), str(tmp), metadata={"model": model, "version": str(version)})
        tmp.replace(out)
    except (OSError, SafetensorError) as e:
        full = getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e)
        if full:
            raise NoSpace(f"no space left to write {out}: free some space and retry") from None
        raise InvalidInput(f"cannot write {out}: {str(e).strip().splitlines()[0]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return len(tensors)
