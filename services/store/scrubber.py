"""The background scrub of `llmk serve store`: every `interval` seconds, re-hash every object file.

Reads verify an object once per file state, so damage that keeps a file's size, inode and times (a failing
disk, a bad copy) would otherwise wait for the next read of that very object. The scrub finds it first,
quarantines it as `llmk store scrub` does (reads of it then fail as Corrupt, never serve wrong bytes) and
counts it, so an operator can alert on the metric and restore the file from a backup.
"""

from __future__ import annotations

import logging
import threading
import time

from services.store.metrics import Metrics
from services.store.usecases.store import Store

log = logging.getLogger("llmk.store.scrub")


class Scrubber:
    def __init__(self, store: Store, interval_seconds: float, metrics: Metrics | None = None):
        self.store = store
        self.interval = interval_seconds
        self.metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llmk-store-scrub", daemon=True)

    def start(self) -> Scrubber:
        """Scrub every interval (the first pass one interval after start: a restart reads no disk)."""
        if self.interval > 0:
            self._thread.start()
            log.info("background scrub every %.0f s", self.interval)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """No new pass starts; a pass under way gets `timeout` seconds, then is left to die with the process
        (the thread is a daemon, and a quarantine move is one atomic rename)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("background scrub still running after %.0f s; abandoned", timeout)

    def scrub_once(self) -> list[str]:
        """One pass: the damaged objects found, now in quarantine/."""
        start = time.perf_counter()
        damaged = self.store.scrub()
        if self.metrics is not None:
            self.metrics.scrubbed(damaged)
        if damaged:
            log.error(
                "background scrub: %d damaged object(s) moved to quarantine/ (reads of them fail until "
                "restored): %s",
                len(damaged),
                ", ".join(sha[:12] for sha in damaged),
            )
        else:
            log.info("background scrub: every object intact (%.1f s)", time.perf_counter() - start)
        return damaged

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scrub_once()
            except Exception:  # a failed pass (a vanished folder, an I/O error) must not end the next ones
                log.exception("background scrub failed; next pass in %.0f s", self.interval)
