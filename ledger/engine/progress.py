"""A run's progress reports, written at most every ``PROGRESS_INTERVAL_S``.

A tool may report progress many times a second, and every event stays on the log forever (and is a
batch of its own for every reader to fetch), so reports are coalesced: one inside the interval is
held, replaced by any later one, and written when the interval ends, or just before the run's next
other event (a question, a step, its end), whichever comes first. Readers see the latest progress at
most one interval late, in order, and the last report before a run ends is always written.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from ledger.contract.events import ProgressReported

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.5


class CoalescedProgress:
    def __init__(self, write: Callable[[ProgressReported], Awaitable[None]], task_id: str,
                 interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self._write = write
        self._task_id = task_id
        self._interval_s = interval_s
        self._written_at = -math.inf
        self._held: ProgressReported | None = None
        self._timer: asyncio.Task[None] | None = None

    async def report(self, event: ProgressReported) -> None:
        now = asyncio.get_running_loop().time()
        if self._held is None and now - self._written_at >= self._interval_s:
            self._written_at = now
            await self._write(event)
            return
        self._held = event
        if self._timer is None:
            delay = max(0.0, self._written_at + self._interval_s - now)
            self._timer = asyncio.create_task(self._flush_after(delay), name="progress")

    async def flush(self) -> None:
        """Write the held report, if any (before the run's next other event)."""
        held, self._held = self._held, None
        if held is not None:
            self._written_at = asyncio.get_running_loop().time()
            await self._write(held)

    def close(self) -> None:
        """Drop what is held: the run ended without writing it (stopped, or its partition moved)."""
        if self._timer is not None:
            self._timer.cancel()
        self._held = None

    async def _flush_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timer = None
        try:
            await self.flush()
        except Exception as exc:  # progress is advisory: the run goes on, its next report tries again
            log.warning("task %s: a progress report was not written (%s)", self._task_id, exc)
