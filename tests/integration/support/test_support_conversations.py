"""Completions and their feedback in the store's database, on SQLite and on PostgreSQL: stored whole, read
back as written, and feedback refused (with nothing written) for an unknown completion or a second time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmk.bootstrap import Deployment
from llmk.config import Settings
from llmk.errors import AlreadyExists, NotFound
from services.support.adapters.tables import ConversationsDb
from services.support.interface import Completion, Feedback, Turn


@pytest.fixture
def db(settings: Settings) -> ConversationsDb:
    return ConversationsDb(Deployment(settings).engine)


def completion(id: str = "chatcmpl-1") -> Completion:
    turns = (Turn("system", "Be kind."), Turn("user", "Où est ma commande ? 📦"))
    return Completion(id, "smol", turns, "It ships tomorrow.", 17, "stop", 812.5)


def test_a_completion_reads_back_as_stored(db: ConversationsDb) -> None:
    db.add(completion())
    found = db.get("chatcmpl-1")
    assert found.feedback is None
    stored = found.completion
    assert stored.messages == completion().messages
    assert (stored.reply, stored.version, stored.finish_reason) == ("It ships tomorrow.", 17, "stop")
    assert stored.latency_ms == 812.5
    assert stored.created_at is not None
    assert stored.created_at.tzinfo is not None


def test_feedback_is_kept_with_its_completion(db: ConversationsDb) -> None:
    db.add(completion())
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    db.add_feedback(Feedback("chatcmpl-1", "down", "It ships on Monday.", when))
    given = db.get("chatcmpl-1").feedback
    assert given == Feedback("chatcmpl-1", "down", "It ships on Monday.", when)


def test_feedback_on_an_unknown_completion_is_refused(db: ConversationsDb) -> None:
    with pytest.raises(NotFound, match="no completion with id 'chatcmpl-404'"):
        db.add_feedback(Feedback("chatcmpl-404", "up"))
    db.add(completion("chatcmpl-404"))
    assert db.get("chatcmpl-404").feedback is None  # the refused one left nothing behind


def test_a_second_feedback_is_refused_and_the_first_kept(db: ConversationsDb) -> None:
    db.add(completion())
    db.add_feedback(Feedback("chatcmpl-1", "up"))
    with pytest.raises(AlreadyExists, match="already has feedback"):
        db.add_feedback(Feedback("chatcmpl-1", "down", "better"))
    given = db.get("chatcmpl-1").feedback
    assert given is not None
    assert (given.rating, given.correction) == ("up", "")


def test_an_unknown_completion_is_not_found(db: ConversationsDb) -> None:
    with pytest.raises(NotFound):
        db.get("nope")
