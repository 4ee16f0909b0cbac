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
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from aiokafka.errors import KafkaError

from ledger import hops
from ledger.contract.events import ResponseSubmitted, TaskEvent
from ledger.kafka.reader import LogReader
from ledger.kafka.records import LogRecord, Position
from ledger.kafka.security import KafkaSecurityError
from ledger.metrics import Metrics
from ledger.pauses import settles_on_waking
from ledger.service.replay import PARALLEL_FROM_EVENTS, Progress, build_store, log_size, no_collections
from ledger.settings import Settings
from projections.projector import REMEMBERED_EVENT_IDS, Projector, flush
from projections.status import StatusProjection, TaskRow
from projections.store import ProjectionStore, store_matches_topic

log = logging.getLogger(__name__)

ListKey = tuple[int, str]  # (created_at, task_id): the order tasks/list pages in

FLUSH_INTERVAL_S = 0.2
MAX_UNFLUSHED = 10_000  # history entries held in memory before the follower waits for the store
CATCH_UP_REPORT_S = 2.0


class ReadTimeout(TimeoutError):
    """The projection did not show an appended event in time (the broker or this reader is behind)."""


class LiveView:
    """With a ``store``, the rows and history are also written to it (in the background, in batches,
    with the offsets they reach) and a restart resumes from its checkpoint."""

    def __init__(self, settings: Settings, store: ProjectionStore | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        if store is None:
            self._projector = Projector(StatusProjection(), history=False)
        else:
            self._projector = Projector(store=store, capacity=settings.cached_rows,
                                        remembered_ids=REMEMBERED_EVENT_IDS)
        self.projection = self._projector.projection
        self._reader: LogReader | None = None
        self._flushing: asyncio.Task[None] | None = None
        self._unflushed = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._applied: dict[int, int] = {}  # the offsets the projector's batch reaches
        self._flushed: dict[int, int] = {}  # the checkpoint last written to the store
        self._follower: asyncio.Task[None] | None = None
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._offset_waiters: dict[int, list[tuple[int, int, asyncio.Future[None]]]] = {}
        self._tiebreak = itertools.count()
        self._tasks = 0  # in the store or held, for /healthz
        self.reads = store  # where lists and rows let go of are read
        self._listeners: list[Callable[[TaskRow | None, TaskRow | None], None]] = []
        self._event_listeners: list[Callable[[TaskEvent], None]] = []
        self.caught_up = asyncio.Event()
        self._catch_up_read = 0
        self._catch_up_pauses = ExitStack()  # what a catch-up suspends until it ends
        # The store's query indexes wait for the end of the catch-up; a new store is also filled by a
        # replay when the log is long.
        self._indexing = False
        self._catch_up_started: float | None = None
        self._catch_up_reported = 0.0
        self._rounds = 0  # fetches completed

    def listen(self, listener: Callable[[TaskRow | None, TaskRow | None], None]) -> None:
        """Call ``listener(before, after)`` for every row an event changes (live events only)."""
        self._listeners.append(listener)

    def listen_events(self, listener: Callable[[TaskEvent], None]) -> None:
        """Call ``listener(event)`` for every event that changed a row (live events only), after the row
        listeners."""
        self._event_listeners.append(listener)

    async def start(self) -> None:
        """Resume from the store's checkpoint (when it was built from this topic), then follow the log."""
        if self.store is not None:
            if not await store_matches_topic(self.store, self.settings):
                log.warning("projection store %s was built from another %s; rebuilding it from the log",
                            self.store.path, self.settings.events_topic)
                self.store.clear()
            self._applied = self._flushed = self.store.checkpoint()
            self._projector.fence.owners.update(self.store.owners())
            self._tasks = self.store.count()
            if not self._applied:  # the whole log to fold, into a new store: the indexes are made after it
                self._indexing = True
                await asyncio.to_thread(self.store.unindex)
        await self._follow_from(self._applied)
        if self.store is not None:
            self._flushing = asyncio.create_task(self._flush_forever(), name="projection store")

    async def _follow_from(self, checkpoint: dict[int, int]) -> None:
        self._applied = dict(checkpoint)
        await self._read_from(checkpoint)
        # A catch-up makes no cycles, and each collection walks every row held (as in a replay).
        self._catch_up_pauses.enter_context(no_collections())
        self._follower = asyncio.create_task(self._follow(), name="live view")

    async def stop(self) -> None:
        self._catch_up_pauses.close()
        for task in (self._follower, self._flushing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.store is not None:
            await self.flush()
        if self._reader is not None:
            await self._reader.stop()

    def get(self, task_id: str) -> TaskRow | None:
        return self.projection.get(task_id)

    async def load(self, task_id: str) -> TaskRow | None:
        """``get``, and where this view holds only some rows, the task's row read from where the rest are."""
        return self.get(task_id)

    async def following(self) -> None:
        """Return when this view stops following the log, raising what stopped it."""
        await asyncio.shield(self._follower)

    def not_ready(self) -> str | None:
        """Why this view cannot answer reads yet (None when it can): not caught up, or not following."""
        if self._follower is None or self._follower.done():
            return "not following the log"
        if not self.caught_up.is_set():
            return "catching up with the log"
        return None

    def dead_letters(self) -> int:
        """Undecodable records this view skipped."""
        return self._reader.dead_letter_count if self._reader is not None else 0

    def lag(self) -> int:
        """Events on the topic this view has not applied yet, as of its last fetch."""
        return self._reader.lag() if self._reader is not None else 0

    def describe(self) -> dict[str, object]:
        """How far this view has read, for a stuck task's report."""
        reader = self._reader
        return {"caught_up": self.caught_up.is_set(), "following": self.not_ready() is None,
                "positions": reader.positions() if reader is not None else None,
                "lag": self.lag(), "fetch_rounds": self._rounds}

    def task_count(self) -> int:
        return self._tasks

    async def reached(self, position: Position, timeout: float) -> None:
        """Return once the event at ``position`` is applied; ``ReadTimeout`` after ``timeout`` seconds."""
        if self._applied.get(position.partition, 0) > position.offset:
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._offset_waiters.setdefault(position.partition, []),
                       (position.offset, next(self._tiebreak), waiter))
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
        if not done and not await settles_on_waking(waiter):
            waiter.cancel()
            raise ReadTimeout(f"event at {position.partition}@{position.offset} not visible after {timeout:g} s")

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

    async def page(self, principal: str | None, after: ListKey | None, limit: int) -> list[TaskRow]:
        """Up to ``limit`` of the principal's tasks in creation order, starting after ``after``: read
        from the store once it holds what this view has applied, each as this view holds it now."""
        await self.flush()
        rows = await asyncio.to_thread(self.reads.tasks, principal=principal, after=after, limit=limit)
        held = self.projection.get  # newer than the store's where it differs; a task not held is not looked up
        return [held(row.task_id, look_up=False) or row for row in rows]

    async def _read_from(self, checkpoint: dict[int, int]) -> None:
        self._reader = LogReader(self.settings, client_id=f"{self.settings.client_id}-view", checkpoint=checkpoint)
        await self._reader.start()

    async def _follow(self) -> None:
        if self._indexing:
            await self._fill_by_replay()
        while True:
            try:
                records = await self._reader.fetch()
            except (asyncio.CancelledError, KafkaSecurityError):
                raise
            except Exception:
                log.exception("live view: fetch failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if records:
                await self._before_applying(records)
                self._apply(records)
                self._after_applying()
            positions = self._reader.positions()
            if positions != self._applied:
                self._applied = positions
                if self.store is not None:
                    self._unflushed.set()
                    if len(self._projector.batch) > MAX_UNFLUSHED:
                        await self.flush()
            self._release_offset_waiters()
            self._rounds += 1
            if not self.caught_up.is_set():
                await self._catching_up(len(records))

    async def _fill_by_replay(self) -> None:
        """Fill a new store on a long log (``PARALLEL_FROM_EVENTS`` events or more) as ``ledger replay``
        fills one (processes sharing the partitions, the indexes after), and follow the log from where
        the replay ended: a fresh server catches up at the replay's rate. A fill that fails or is
        stopped is cleared (it has no indexes to resume with), and the view folds the log itself."""
        store = self.store
        if not isinstance(store, ProjectionStore) or store.path == ":memory:":
            return
        _, events = await log_size(self.settings)
        if events < PARALLEL_FROM_EVENTS:
            return
        log.info("live view: catching up with the log: %d events; replaying them into the new store %s first",
                 events, store.path)
        self._catch_up_started = self._catch_up_reported = asyncio.get_running_loop().time()
        async with self._flush_lock:  # nothing of the view's own is written while the replay writes
            await self._reader.stop()
            try:
                summary = await build_store(self.settings, Path(store.path), progress=self._replaying, fork=False)
            except asyncio.CancelledError:
                store.clear()  # here, not in a thread: a cancelled task may not get to wait for one
                raise
            except Exception:
                log.exception("live view: the replay into the new store failed; folding the log here instead")
                await asyncio.to_thread(store.clear)
            else:
                self._indexing = False  # the replay made them
                self._applied = self._flushed = store.checkpoint()
                self._projector.fence.owners.update(store.owners())
                self._tasks = store.count()
                self._catch_up_read = summary.events
                self._catch_up_reported = asyncio.get_running_loop().time()
                log.info("live view: replayed %d events into the store in %.1f s (%.0f events/s); following the log",
                         summary.events, summary.seconds, summary.rate)
            await self._read_from(self._applied)

    @staticmethod
    def _replaying(progress: Progress) -> None:
        log.info("live view: catching up with the log: replaying into the new store: %d events, %.0f/s, %d to go",
                 progress.events, progress.rate, progress.lag)

    async def _catching_up(self, read: int) -> None:
        """Count what catch-up read, say every few seconds how far it is, and mark its end."""
        now = asyncio.get_running_loop().time()
        self._catch_up_read += read
        if self._catch_up_started is None:
            self._catch_up_started = self._catch_up_reported = now
        if self._reader.caught_up():
            if self._indexing:
                await self.flush()
                await asyncio.to_thread(self.store.index)
                self._indexing = False
            self._catch_up_pauses.close()
            now = asyncio.get_running_loop().time()
            self.caught_up.set()
            if self._catch_up_read:
                log.info("live view: caught up with the log: %d events read in %.1f s", self._catch_up_read,
                         now - self._catch_up_started)
        elif now - self._catch_up_reported >= CATCH_UP_REPORT_S:
            self._catch_up_reported = now
            log.info("live view: catching up with the log: %d events read, %d to go", self._catch_up_read,
                     self._reader.lag())

    def _apply(self, records: list[LogRecord]) -> None:
        touched: set[str] = set()
        for record in records:
            self._apply_record(record)
            touched.add(record.event.task_id)
        if self.metrics is not None:
            self.metrics.events_consumed.inc(len(records))

        if hops.TRACE_FILE:
            hops.hop("view.applied", ",".join(sorted(touched)))
        for task_id in touched & self._watchers.keys():
            for changed in self._watchers.pop(task_id):
                if not changed.done():
                    changed.set_result(None)

    def _apply_record(self, record: LogRecord) -> None:
        event = record.event
        before, after = self._projector.apply(record)
        if self.metrics is not None and isinstance(event, ResponseSubmitted) and before is not None \
                and self.caught_up.is_set():
            pending = before.pending_elicitation(event.elicitation_id)
            if pending is not None:
                self.metrics.elicitation_wait.observe(max(0, event.occurred_at - pending.requested_at) / 1000)
        self._applied_record(record, before, after)
        if before is after or not self.caught_up.is_set():
            return  # a repeat, an event the fence ignored, or catch-up
        for listener in self._listeners:
            try:
                listener(before, after)
            except Exception:  # a listener's failure must never stop the view following the log
                log.exception("live view: listener %r failed on task %s", listener, event.task_id)
        for event_listener in self._event_listeners:
            try:
                event_listener(event)
            except Exception:
                log.exception("live view: listener %r failed on task %s", event_listener, event.task_id)

    async def _before_applying(self, records: list[LogRecord]) -> None:
        """What a fetch's records need before they are folded (nothing, here)."""

    def _applied_record(self, record: LogRecord, before: TaskRow | None, after: TaskRow | None) -> None:
        if before is None and after is not None:
            self._tasks += 1

    def _after_applying(self) -> None:
        """What follows a fetch's fold (nothing, here)."""

    async def _flush_forever(self) -> None:
        while True:
            await self._unflushed.wait()
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self.flush()

    async def flush(self) -> None:
        """Write what changed, with the offsets it reaches, to the store (off the event loop, in order)."""
        async with self._flush_lock:
            self._unflushed.clear()
            batch, checkpoint = self._projector.take(), self._applied
            try:
                if self.store is not None and (len(batch) or batch.rows or checkpoint != self._flushed):
                    writing = asyncio.ensure_future(asyncio.to_thread(flush, self.store, batch, checkpoint))
                    try:
                        await asyncio.shield(writing)
                    except asyncio.CancelledError:
                        # The thread writes on regardless: hold the lock until it is done, or the next
                        # flush could land first and this older batch overwrite it.
                        await writing
                        raise
                    self._flushed = checkpoint
            finally:
                self._projector.written(batch)

    async def settle(self, timeout: float) -> bool:
        """Return once this view has applied what was on the log when it was called (a task another
        server just created, or the question it just asked, is then visible here): True; False when
        that took longer than ``timeout`` seconds or the brokers could not say where the log ends."""
        if self._follower is None or self._follower.done():
            return True
        try:
            async with asyncio.timeout(timeout):
                ends = await self._reader.end_offsets()
                await asyncio.gather(*(self.reached(Position(partition, end - 1), timeout)
                                       for partition, end in ends.items() if end > 0))
            return True
        except (TimeoutError, KafkaError) as exc:
            # The brokers are away (or slow): the view answers from what it has read.
            if isinstance(exc, KafkaError):
                log.info("could not learn the log's end offsets (%s); answering from what was read", exc)
            return False

    def _release_offset_waiters(self) -> None:
        for partition, waiters in self._offset_waiters.items():
            applied = self._applied.get(partition, 0)
            while waiters and waiters[0][0] < applied:
                _, _, waiter = heapq.heappop(waiters)
                if not waiter.done():
                    waiter.set_result(None)
