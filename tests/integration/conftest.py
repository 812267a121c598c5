"""Fixtures every integration suite shares: a store home holding the tiny model."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.unit.inference.hosting import create_tiny, settings_for


@pytest.fixture
def tiny_home(tmp_path: Path) -> tuple[Path, str]:
    """A store home holding the tiny model under a unique name (events on a shared broker stay apart)."""
    from llmk.bootstrap import Deployment

    home, name = tmp_path / "home", f"tiny-{uuid.uuid4().hex[:8]}"
    create_tiny(Deployment(settings_for(home)).local_store(), name)
    return home, name
