"""VersionEvent: the one record for version announcements, the same after a trip through JSON; anything
else on the wire is refused with InvalidInput, never half-read."""

from __future__ import annotations

import json

import pytest

from llmk.domain.versions import VersionEvent
from llmk.errors import InvalidInput


@pytest.mark.parametrize(
    "event",
    [
        VersionEvent("m", "main", 7, 6, ("a.weight", "b.weight")),
        VersionEvent("m", "main", 1, None, ("a.weight",)),
        VersionEvent("m", "exp", 9, 8, None),  # a rollback: any tensor may differ
        VersionEvent("m", "main", 10, 9, ()),  # a squash: same values, new id
    ],
)
def test_an_event_survives_json(event: VersionEvent) -> None:
    assert VersionEvent.decode(json.loads(json.dumps(event.encode()))) == event


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "branch": "main", "version": "7", "parent": 6, "changed": []},  # id as text
        {"model": "m", "branch": "main", "version": 7, "parent": True, "changed": []},
        {"model": "m", "branch": "main", "version": 7, "changed": []},  # no parent
        {"model": "m", "branch": "main", "version": 7, "parent": 6, "changed": "a.weight"},
        {"model": 3, "branch": "main", "version": 7, "parent": 6, "changed": None},
        ["m", "main", 7, 6, None],
        None,
    ],
)
def test_anything_else_is_refused(body: object) -> None:
    with pytest.raises(InvalidInput, match="not a version event"):
        VersionEvent.decode(body)  # type: ignore[arg-type]
