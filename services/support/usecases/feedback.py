"""What makes feedback on a reply acceptable, whoever sends it (the HTTP API, the CLI)."""

from __future__ import annotations

from llmk.errors import InvalidInput
from services.support.interface import RATINGS, Feedback

MAX_CORRECTION_CHARS = 20_000


def check_feedback(feedback: Feedback) -> None:
    if feedback.rating not in RATINGS:
        raise InvalidInput(f"rating must be 'up' or 'down', got {feedback.rating!r}")
    if not feedback.completion_id.strip():
        raise InvalidInput("feedback needs the id of the completion it is about")
    if feedback.correction and not feedback.correction.strip():
        raise InvalidInput("the correction is blank: leave it out or write the better reply")
    if len(feedback.correction) > MAX_CORRECTION_CHARS:
        raise InvalidInput(f"the correction is over {MAX_CORRECTION_CHARS} characters")
