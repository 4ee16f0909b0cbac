"""The status projection a server keeps current by following every partition of the log.

It answers reads from memory and offers the two waits a server needs: until an event it just
appended has been applied (read-your-writes), and until a task's row changes (blocking reads
such as ``tasks/result``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from bisect import bisect_right, insort
from collections.abc import Callable

from ledger.events import TaskEvent
from ledger.reader import LogReader
from ledger.records import LogRecord, Position
from ledger.settings import Settings
from projections.status import StatusProjection, TaskRow

log = logging.getLogger(__name__)

ListKey = tuple[int, str]  # (created_at, task_id): the order tasks/list pages in


class ReadTimeout(TimeoutError):
    """The projection did not show an appended event in time (the broker or this reader is behind)."""


class LiveView:
    def __init__(self, settings: Settings, projection: StatusProjection | None = None) -> None:
        self.settings = settings
        self.projection = projection or StatusProjection()
        self._reader = LogReader(settings, client_id=f"{settings.client_id}-view")
        self._follower: asyncio.Task[None] | None = None
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._offset_waiters: dict[int, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._tiebreak = itertools.count()
        self._listing: dict[str | None, list[ListKey]] = {}
        self._listeners: list[Callable[[TaskRow | None, TaskRow | None], None]] = []
        self.caught_up = asyncio.Event()

    def listen(self, listener: Callable[[TaskRow | None, TaskRow | None], None]) -> None:
        """Call ``listener(before, after)`` for every row an event changes (live events only)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        await self._reader.start()
        self._follower = asyncio.create_task(self._follow(), name="live view")

    async def stop(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await self._reader.stop()

    def get(self, task_id: str) -> TaskRow | None:
        return self.projection.get(task_id)

    async def reached(self, position: Position, timeout: float) -> None:
        """Return once the event at ``position`` is applied; ``ReadTimeout`` after ``timeout`` seconds."""
        if self._reader.positions().get(position.partition, 0) > position.offset:
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._offset_waiters.setdefault(position.partition, []),
                       (position.offset, next(self._tiebreak), waiter))
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise ReadTimeout(f"event at {position.partition}@{position.offset} not visible after {timeout:.0f}s") from None

    async def wait(self, task_id: str, done: Callable[[TaskRow | None], bool], timeout: float | None) -> TaskRow | None:
        """The task's row once ``done(row)`` holds, or its row as it is when ``timeout`` runs out."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            row = self.get(task_id)
            if done(row):
                return row
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return row
            changed = loop.create_future()
            watchers = self._watchers.setdefault(task_id, [])
            watchers.append(changed)
            try:
                await asyncio.wait_for(changed, remaining)
            except TimeoutError:
                return self.get(task_id)
            finally:
                if not changed.done():
                    watchers.remove(changed)
                    if not watchers:
                        del self._watchers[task_id]

    def page(self, principal: str | None, after: ListKey | None, limit: int) -> list[TaskRow]:
        """Up to ``limit`` of the principal's tasks in creation order, starting after ``after``."""
        keys = self._listing.get(principal, [])
        start = 0 if after is None else bisect_right(keys, after)
        rows = []
        for _, task_id in keys[start:start + limit]:
            row = self.get(task_id)
            if row is not None:
                rows.append(row)
        return rows

    async def _follow(self) -> None:
        while True:
            try:
                records = await self._reader.fetch()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live view: fetch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if records:
                self._apply(records)
            self._release_offset_waiters()
            if not self.caught_up.is_set() and self._reader.caught_up():
                self.caught_up.set()

    def _apply(self, records: list[LogRecord]) -> None:
        touched: set[str] = set()
        for record in records:
            self._apply_event(record.event)
            touched.add(record.event.task_id)
        for task_id in touched & self._watchers.keys():
            for changed in self._watchers.pop(task_id):
                if not changed.done():
                    changed.set_result(None)

    def _apply_event(self, event: TaskEvent) -> None:
        before = self.projection.get(event.task_id)
        after = self.projection.apply(event)
        if before is None and after is not None:
            insort(self._listing.setdefault(after.principal, []), (after.created_at, after.task_id))
        elif before is not None and after is None:
            self._listing[before.principal].remove((before.created_at, before.task_id))
        if before is not after and self.caught_up.is_set():
            for listener in self._listeners:
                try:
                    listener(before, after)
                except Exception:  # a listener's failure must never stop the view following the log
                    log.exception("live view: listener %r failed on task %s", listener, event.task_id)

    def _release_offset_waiters(self) -> None:
        positions = self._reader.positions()
        for partition, waiters in self._offset_waiters.items():
            applied = positions.get(partition, 0)
            while waiters and waiters[0][0] < applied:
                _, _, waiter = heapq.heappop(waiters)
                if not waiter.done():
                    waiter.set_result(None)
