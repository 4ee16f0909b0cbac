"""The projectors: a consumer group that keeps the shared projection store (PostgreSQL) current.

Each member (``ledger projector``) folds the partitions the group gives it with the one projector
(``projections.projector``, as a server and ``ledger replay`` do) and writes what each fetch changed
(rows, history entries, the partitions' checkpoints and owners) in one transaction, fenced by the
checkpoints it resumed from. So the database is always the log folded to its checkpoint, a member
that takes a partition over resumes at that checkpoint, and two members that both believe they own a
partition during a rebalance cannot both write it: the second is refused and reads on from where
the first left it. The group's offsets are committed after each write, for ``ledger topics``; the
database's checkpoint is what a member resumes from.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.errors import KafkaError

from ledger.kafka.group import GroupConsumer
from ledger.kafka.records import LogRecord
from ledger.settings import Settings
from projections.postgres import CheckpointMoved, PostgresStore, refuse_foreign
from projections.projector import REMEMBERED_EVENT_IDS, Projector

log = logging.getLogger(__name__)

FETCH_RECORDS = 5_000  # the most a transaction holds while a member catches up


class ProjectorMember:
    """One member of the ``<prefix>.projectors`` group, writing into ``store``."""

    def __init__(self, settings: Settings, store: PostgresStore, *, member_id: str = "projector") -> None:
        self.settings = settings
        self.store = store
        self._consumer = GroupConsumer(settings, group_id=f"{settings.topic_prefix}.projectors",
                                       on_assigned=self._assigned, on_revoked=self._revoked, starts=self._starts,
                                       client_id=f"{settings.client_id}-{member_id}", max_records=FETCH_RECORDS)
        self._projector = self._new_projector({})
        self._written: dict[int, int] = {}  # each owned partition's checkpoint, as this member last wrote it
        self._owners_at_start: dict[int, str] = {}  # the owners as of the checkpoint last read
        self.events = 0  # folded since start

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Fold the group's partitions into the store until cancelled; ``ready`` is set once this member
        is part of the group."""
        await refuse_foreign(self.store, self.settings)
        await self._consumer.start()
        try:
            if ready is not None:
                ready.set()
            while True:
                self._fold(await self._consumer.fetch())
                await self._write()
        finally:
            await self._consumer.stop()

    def checkpoint(self) -> dict[int, int]:
        """Where this member's partitions stand in the database."""
        return dict(self._written)

    def _fold(self, records: list[LogRecord]) -> None:
        apply = self._projector.apply
        for record in records:
            apply(record)
        self.events += len(records)

    async def _write(self) -> None:
        """What the fetches changed, with the offsets they reach, in one transaction."""
        reached = {p: self._consumer.position(p) for p in self._written}
        checkpoint = {p: offset for p, offset in reached.items() if offset is not None and offset != self._written[p]}
        if not checkpoint:
            return
        projector = self._projector
        batch = projector.take()
        expect = {p: self._written[p] for p in checkpoint}
        try:
            await asyncio.to_thread(self.store.write, batch.rows.values(), batch.entries, checkpoint, batch.owners,
                                    expect)
        except CheckpointMoved as exc:
            log.warning("projector: %s; reading on from the database's checkpoint", exc)
            await self._resume(set(self._written))
            return
        finally:
            projector.written(batch)
        self._written.update(checkpoint)
        try:
            await self._consumer.commit(checkpoint)
        except KafkaError as exc:  # only what `ledger topics` shows: the database holds the checkpoint
            log.info("projector: could not commit the group's offsets (%s)", exc)

    async def _starts(self, partitions: set[int]) -> dict[int, int]:
        """Where ``partitions`` stand in the database: where this member reads them from. The owners are
        read with the checkpoint, so the fold resumes with the owners as of the offsets it resumes at."""
        checkpoint, self._owners_at_start = await asyncio.to_thread(self.store.snapshot)
        starts = {p: checkpoint.get(p, 0) for p in partitions}
        self._written.update(starts)
        return starts

    async def _assigned(self, partitions: set[int]) -> None:
        self._projector = self._new_projector(self._owners_at_start)
        log.info("projector: folding partitions %s from offsets %s", sorted(partitions),
                 {p: self._written[p] for p in sorted(partitions)})

    async def _revoked(self, partitions: set[int]) -> None:
        await self._write()
        for partition in partitions:
            self._written.pop(partition, None)
        # Rows of the partitions given away change under another member from now on.
        self._projector = self._new_projector(await asyncio.to_thread(self.store.owners))

    async def _resume(self, partitions: set[int]) -> None:
        """Start ``partitions`` again from the database's checkpoint, with nothing folded held."""
        starts = await self._starts(partitions)
        self._projector = self._new_projector(self._owners_at_start)
        self._consumer.rewind(starts)

    def _new_projector(self, owners: dict[int, str]) -> Projector:
        return Projector(store=self.store, capacity=self.settings.cached_rows, remembered_ids=REMEMBERED_EVENT_IDS,
                         owners=owners)
