"""Folding log records into the projections, and the batches that carry them to a store.

The server (live), ``ledger replay`` and the read commands all fold through a ``Projector``, so
the rows and history they show come from one code path: replay == live by construction, and the
property tests check it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ledger.contract.events import ElicitationExpired, PartitionClaimed, ResponseSubmitted, TaskCreated, starts_new_task
from ledger.kafka.records import LogRecord
from projections.fence import Fence
from projections.history import REPEATED_CALL, Recorded, not_outstanding, recorded
from projections.status import StatusProjection, TaskRow
from projections.store import ProjectionStore

# Event ids a bounded projector remembers to drop a producer retry's copy, which lands soon after
# the original (a retry follows a lost acknowledgement within the request timeout). The live view
# and ``ledger replay`` must remember as many, or a late copy would be dropped by one and not the
# other. A copy later than this leaves the row unchanged (the transitions ignore a repeat) and adds
# a history entry that repeats the event id.
REMEMBERED_EVENT_IDS = 50_000


@dataclass
class Batch:
    """What changed since the last flush: rows to write, history to add, partition owners."""

    rows: dict[str, TaskRow] = field(default_factory=dict)
    entries: list[Recorded] = field(default_factory=list)
    owners: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)


class Projector:
    """Folds records into the status projection and history entries, batching what changed.

    With a ``store`` the status rows are bounded (``capacity`` in memory, the rest read back from
    the store); a row is read from the newest of: the batch being collected, the batches being
    written, the store.
    """

    def __init__(self, projection: StatusProjection | None = None, *, status: bool = True, history: bool = True,
                 store: ProjectionStore | None = None, capacity: int | None = None,
                 remembered_ids: int | None = None, owners: Mapping[int, str] | None = None) -> None:
        if projection is None:
            lookup = self._stored if store is not None and capacity is not None else None
            projection = StatusProjection(capacity=capacity if lookup else None, lookup=lookup,
                                          remembered_ids=remembered_ids)
        self.projection = projection
        self.status = status
        self.history = history
        self.store = store
        self.fence = Fence(owners)
        self.batch = Batch()
        self._writing: list[Batch] = []

    def apply(self, record: LogRecord) -> tuple[TaskRow | None, TaskRow | None]:
        """Fold one record in; returns the task's row before and after.

        A second copy of an event (same ``event_id``, a producer retry) changes nothing and adds
        no history entry. A worker's event on a partition another worker claimed (``projections.fence``)
        changes nothing and is kept in the history as ignored, and so is an answer to a question that
        was no longer outstanding when it reached the log (another answer came first, through this
        server or any other, or its deadline passed), and a deadline passing after the answer: the log
        decides which answer is the answer. A claim is no task's: it
        only moves the partition's owner. The history needs the fold to tell an answer taken from one
        ignored, so the status is folded whenever either is kept.
        """
        event = record.event
        kind = type(event)
        if kind is PartitionClaimed:
            self.fence.admits(record)
            self.batch.owners[record.partition] = event.actor
            return None, None
        before = self.projection.get(event.task_id, look_up=not starts_new_task(event))
        if self.projection.seen(event.event_id):
            return before, before
        admitted = self.fence.admits(record)
        after = self.projection.fold(before, event) if admitted else before
        if self.status and after is not before and after is not None:
            self.batch.rows[event.task_id] = after
        if self.history:
            if not admitted:
                ignored_because = self.fence.owner(record.partition)
            elif (kind is ResponseSubmitted or kind is ElicitationExpired) and after is before:
                ignored_because = not_outstanding(before, event.elicitation_id)
            elif kind is TaskCreated and before is not None:
                ignored_because = REPEATED_CALL
            else:
                ignored_because = None
            self.batch.entries.append(recorded(record, ignored_because))
        return before, after

    def take(self) -> Batch:
        """The changes so far, to write; call ``written`` once the store has them."""
        batch, self.batch = self.batch, Batch()
        self._writing.append(batch)
        return batch

    def written(self, batch: Batch) -> None:
        self._writing.remove(batch)

    def _stored(self, task_id: str) -> TaskRow | None:
        for batch in (self.batch, *reversed(self._writing)):
            if task_id in batch.rows:
                return batch.rows[task_id]
        assert self.store is not None
        return self.store.row(task_id)


def flush(store: ProjectionStore, batch: Batch, checkpoint: dict[int, int]) -> None:
    store.write(batch.rows.values(), batch.entries, checkpoint, batch.owners)
