"""Stored completions are kept for a set number of days: deleted at start, then on a schedule."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from services.support.interface import Conversations

log = logging.getLogger("llmk.support")
HOURLY = 3600.0


class Retention:
    """Deletes completions (and their feedback) older than `days`, now and every `every` seconds."""

    def __init__(
        self,
        conversations: Conversations,
        days: float,
        every: float = HOURLY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.conversations, self.days, self.every, self.clock = conversations, days, every, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llmk-support-retention", daemon=True)

    def prune(self) -> int:
        gone = self.conversations.prune(self.clock() - timedelta(days=self.days))
        if gone:
            log.info("deleted %d completions older than %g days", gone, self.days)
        return gone

    def start(self) -> None:
        """Prune once now (before serving), then on the schedule; nothing when no retention is set."""
        if self.days > 0:
            self.prune()
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.prune()
            except Exception:  # a database hiccup is retried at the next tick, never a dead gateway
                log.exception("pruning stored completions failed")
