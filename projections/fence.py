"""Which worker's writes count on a partition: the last one to claim it, in log order.

A worker appends ``PartitionClaimed`` to each partition it is given before it runs anything
there. From that record on, an event a worker wrote counts only if that worker made the
partition's latest claim; the others are kept on the log and ignored by every fold (the status
and history projections, and the workers' journals). A worker that lost its partitions without
knowing it (paused past its session timeout, cut off from its group) therefore changes nothing
once its successor has claimed: not a task's outcome, not a journaled step. It works the same on
any broker, because it needs nothing from the broker but the order of a partition's records.

Events written before any claim (a log from an earlier release) all count. Servers' events are
never fenced: only workers (``worker:`` actors) run tools.
"""

from __future__ import annotations

from collections.abc import Mapping

from ledger.contract.events import PartitionClaimed
from ledger.kafka.records import LogRecord

WORKER_PREFIX = "worker:"


class Fence:
    """The owner of each partition as the records read so far say (a partition -> actor map)."""

    __slots__ = ("owners",)

    def __init__(self, owners: Mapping[int, str] | None = None) -> None:
        self.owners: dict[int, str] = dict(owners or {})

    def admits(self, record: LogRecord) -> bool:
        """Fold ``record`` in; False for a worker's event written on a partition another worker claimed."""
        event = record.event
        if isinstance(event, PartitionClaimed):
            self.owners[record.partition] = event.actor
            return True
        if not event.actor.startswith(WORKER_PREFIX):
            return True
        owner = self.owners.get(record.partition)
        return owner is None or owner == event.actor

    def owner(self, partition: int) -> str | None:
        return self.owners.get(partition)

    def forget(self, partition: int) -> None:
        self.owners.pop(partition, None)
