"""Partition ownership on the log: the claims a worker appends for the partitions it is given, and the
claims it reads back.

A worker claims each partition it is given (``PartitionClaimed``) and starts nothing there before it
has read up to its claim; from that claim on, only its writes count (``projections.fence``). A worker
that reads another worker's claim on a partition it holds has lost it without being told (it was
paused, or cut off from its group): it stops its runs there at once. Committed offsets always sit on
a claim, so whoever reads a partition from its committed offset first learns whose writes count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from ledger.contract.events import PartitionClaimed
from ledger.kafka.records import LogRecord

log = logging.getLogger(__name__)

SLOW_CATCH_UP_S = 10.0
# A worker claims its partitions again after this many events, so that its committed offsets, which
# stay on claims (see Worker._safe_offsets), keep up with what it has read.
RECLAIM_AFTER_EVENTS = 10_000


class Claims:
    """The claims of one worker's partitions: its own, being appended or read back, and every claim read."""

    def __init__(self, actor: str, worker_id: str, append: Callable[[PartitionClaimed], Awaitable[None]],
                 position: Callable[[int], int | None], retry_after_s: float) -> None:
        self.actor = actor
        self.worker_id = worker_id
        self._append = append
        self._position = position
        self._retry_after_s = retry_after_s
        self._read: dict[int, list[int]] = {}  # offsets of the claims read on each partition held
        self._appending: dict[int, asyncio.Task[None]] = {}
        # Partitions held, with the event id of the claim this worker made when it got each.
        self._mine: dict[int, str] = {}
        # Partitions being read up to this worker's claim. Their tasks start no run before then: a run
        # must see the task's whole history, or it would ask again a question the task already asked.
        self.catching_up: dict[int, float] = {}  # partition -> when the catch-up began (loop time)

    def take(self, partitions: set[int]) -> None:
        """The group gave this worker ``partitions``: claim each, and read each up to its claim."""
        now = asyncio.get_running_loop().time()
        for partition in partitions:
            self.catching_up[partition] = now
            self._read[partition] = []
            self._mine.pop(partition, None)
        for partition in partitions:
            self.claim(partition)

    def claim(self, partition: int) -> None:
        """Append a claim of ``partition`` in the background (the first of an assignment is the one
        reading back ends at)."""
        if partition in self._appending:
            return
        claim = PartitionClaimed.of(partition, self.actor)
        self._mine.setdefault(partition, claim.event_id)
        self._appending[partition] = asyncio.create_task(self._append_until_taken(claim),
                                                         name=f"claim partition {partition}")

    async def _append_until_taken(self, claim: PartitionClaimed) -> None:
        try:
            while self._appending.get(claim.partition) is asyncio.current_task():
                try:
                    await self._append(claim)
                    return
                except Exception as exc:  # the log is not taking writes; nothing runs here until it does
                    log.error("worker %s: could not claim partition %d (%s); retrying in %.0fs", self.worker_id,
                              claim.partition, exc, self._retry_after_s)
                    await asyncio.sleep(self._retry_after_s)
        finally:
            # A claim let go by a revocation may settle after the next assignment's claim started.
            if self._appending.get(claim.partition) is asyncio.current_task():
                del self._appending[claim.partition]

    def again(self, partitions: set[int]) -> None:
        """Claim again each partition read far past its last claim."""
        for partition in partitions:
            claims, position = self._read.get(partition), self._position(partition)
            if claims and position is not None and partition not in self.catching_up and \
                    position - claims[-1] > RECLAIM_AFTER_EVENTS:
                self.claim(partition)

    def read(self, record: LogRecord) -> Literal["own", "lost"] | None:
        """Note a claim read on a held partition: ``"own"`` when it is this worker's first claim (the
        partition is read up to it), ``"lost"`` when another worker has claimed the partition since."""
        partition = record.partition
        self._read[partition].append(record.offset)
        if record.event.event_id == self._mine.get(partition):
            return "own"
        if partition not in self.catching_up and record.event.actor != self.actor:
            return "lost"
        return None

    def last_at_or_before(self, partition: int, offset: int) -> int | None:
        """The offset of the last claim read on ``partition`` at or before ``offset``."""
        claims = [claim for claim in self._read.get(partition, ()) if claim <= offset]
        return claims[-1] if claims else None

    def let_go(self, partition: int) -> None:
        self.catching_up.pop(partition, None)
        self._read.pop(partition, None)
        self._mine.pop(partition, None)
        # A claim being appended is not cancelled: the append settles (and is counted) on its own, and
        # is not retried once it is no longer this partition's current claim.
        self._appending.pop(partition, None)

    def stop(self) -> None:
        self._appending.clear()

    def pending(self) -> list[int]:
        """Partitions whose claim is still being appended."""
        return sorted(self._appending)

    def report_slow(self, now: float) -> None:
        for partition, since in self.catching_up.items():
            if now - since > SLOW_CATCH_UP_S:
                log.warning("worker %s: partition %d still reading up to its claim after %.0f s (claim %s, "
                            "append %s, read position %s); its tasks wait", self.worker_id, partition, now - since,
                            self._mine.get(partition), "pending" if partition in self._appending else "done",
                            self._position(partition))
