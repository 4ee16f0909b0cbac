"""The live view of a server on the shared projection store: it starts where the database stands.

The projectors keep the database (``projections.postgres``) the log folded to its checkpoint; this
view starts reading the log at that checkpoint, so a server's start costs the projectors' lag, not
the history. It folds what it reads as every view does, and holds:

* the rows of the tasks it folded, until the database's checkpoint passes their last change (then
  the database has them, and they may leave memory), plus a bounded cache of rows read for requests;
* nothing of the history and no task listing: those are read from the database once its checkpoint
  has passed what this view has read (``flush``), so a task or an answer the server just wrote is in
  what it returns.

A row the fold needs and does not hold is made from the task's history entries in the database up
to the record being folded (``rows_before``): exact however far the projectors are ahead of this
view, where the database's current row might already hold the record.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import psycopg

from ledger.contract.events import starts_new_task
from ledger.kafka.records import LogRecord
from ledger.metrics import Metrics
from ledger.service.live_view import LiveView
from ledger.settings import Settings
from projections.postgres import PostgresStore, refuse_foreign
from projections.projector import Projector
from projections.status import StatusProjection, TaskRow

log = logging.getLogger(__name__)

CHECKPOINT_POLL_S = 0.25  # how often the database's checkpoint is read, for what may leave memory
SYNC_POLL_S = 0.005  # how often a read waiting for the database asks again
DATABASE_RETRY_S = 1.0


class SharedView(LiveView):
    """A ``LiveView`` whose rows and history the projectors keep in ``store``."""

    def __init__(self, settings: Settings, store: PostgresStore, metrics: Metrics | None = None) -> None:
        super().__init__(settings, None, metrics)
        self.database = self.reads = store
        self._before: dict[str, TaskRow] = {}  # rows made for the fetch being folded
        self._projector = Projector(StatusProjection(lookup=self._before.get), history=False)
        self.projection = self._projector.projection
        # The rows held, by the last record folded into each: (partition, offset).
        self._changed: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._read: OrderedDict[str, TaskRow] = OrderedDict()  # rows read for requests, not folded
        self._database_at: dict[int, int] = {}
        self._watching: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await refuse_foreign(self.database, self.settings)
        checkpoint, owners = await asyncio.to_thread(self.database.snapshot)
        self._database_at = dict(checkpoint)
        self._projector.fence.owners.update(owners)
        await self._follow_from(checkpoint)
        self._watching = asyncio.create_task(self._watch_database(), name="database checkpoint")

    async def stop(self) -> None:
        if self._watching is not None:
            self._watching.cancel()
            await asyncio.gather(self._watching, return_exceptions=True)
        await super().stop()

    def get(self, task_id: str) -> TaskRow | None:
        return self.projection.rows.get(task_id) or self._read.get(task_id)

    async def load(self, task_id: str) -> TaskRow | None:
        row = self.get(task_id)
        if row is None:
            row = await asyncio.to_thread(self.database.row, task_id)
            if row is not None and task_id not in self.projection.rows:
                self._read[task_id] = row
                if len(self._read) > self.settings.cached_rows:
                    self._read.popitem(last=False)
        return row

    def task_count(self) -> int:
        return len(self.projection.rows)

    async def flush(self) -> None:
        """Return once the database holds everything this view has applied (at most the read timeout;
        then what it holds)."""
        applied = dict(self._applied)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.read_timeout_ms / 1000
        while not self._database_has(applied):
            if loop.time() >= deadline:
                log.warning("the projection database is behind this server (at %s, the server at %s): "
                            "answering from what it holds", self._database_at, applied)
                return
            await asyncio.sleep(SYNC_POLL_S)
            self._database_at = await asyncio.to_thread(self.database.checkpoint)

    def _database_has(self, positions: dict[int, int]) -> bool:
        at = self._database_at
        return all(at.get(partition, 0) >= offset for partition, offset in positions.items())

    async def _before_applying(self, records: list[LogRecord]) -> None:
        """Make the rows the fold of ``records`` needs and does not hold, in one database read."""
        held = self.projection.rows
        wanted: dict[str, tuple[int, int]] = {}
        for record in records:
            task_id = record.event.task_id
            if task_id not in held and task_id not in wanted and not starts_new_task(record.event):
                wanted[task_id] = (record.partition, record.offset)
        self._before.clear()
        while wanted:
            try:
                self._before.update(await asyncio.to_thread(self.database.rows_before, wanted))
                return
            except psycopg.Error as exc:  # the fold cannot go on without those rows: it waits for the database
                log.warning("live view: cannot read the projection database (%s); trying again in %.0f s",
                            exc, DATABASE_RETRY_S)
                await asyncio.sleep(DATABASE_RETRY_S)

    def _applied_record(self, record: LogRecord, before: TaskRow | None, after: TaskRow | None) -> None:
        task_id = record.event.task_id
        self._read.pop(task_id, None)
        if after is not None:
            self._changed[task_id] = (record.partition, record.offset)
            self._changed.move_to_end(task_id)

    def _after_applying(self) -> None:
        """Let rows the database has leave memory, beyond the cache's size."""
        rows, changed, at = self.projection.rows, self._changed, self._database_at
        while len(rows) > self.settings.cached_rows and changed:
            task_id, (partition, offset) = next(iter(changed.items()))
            if offset >= at.get(partition, 0):
                break  # the database has not folded it yet: it stays (bounded by the projectors' lag)
            del changed[task_id]
            rows.pop(task_id, None)

    async def _watch_database(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_POLL_S)
            try:
                self._database_at = await asyncio.to_thread(self.database.checkpoint)
            except Exception as exc:  # a database away only keeps rows in memory longer
                log.warning("could not read the projection database's checkpoint: %s", exc)

