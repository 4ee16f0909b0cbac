"""Rebuilding projections from the log: ``ledger replay`` and the read commands that fold the topic.

The fold is the server's (``projections.projector``), so a replayed store holds exactly what a
server that followed the log live holds. Writes go to SQLite in large batches off the event loop
while the consumer keeps fetching.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from ledger.reader import LogReader
from ledger.settings import Settings
from projections.projector import Projector, flush
from projections.store import ProjectionStore

BATCH_ENTRIES = 50_000
REPLAY_ROWS = 50_000  # task rows held in memory; the store holds them all
REMEMBERED_IDS = 200_000
PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class Progress:
    events: int
    seconds: float
    lag: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    events: int
    skipped: int
    tasks: int
    seconds: float
    dead_letters: int
    checkpoint: dict[int, int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def replay(settings: Settings, store: ProjectionStore, *, status: bool = True, history: bool = True,
                 since_ms: int | None = None, to_offset: int | None = None,
                 progress: Callable[[Progress], None] | None = None) -> ReplaySummary:
    """Fold the topic from offset 0 into ``store`` until caught up (or every partition reached ``to_offset``).

    ``since_ms`` leaves out events that occurred before it; ``to_offset`` stops each partition there.
    """
    projector = Projector(status=status, history=history, store=store, capacity=REPLAY_ROWS,
                          remembered_ids=REMEMBERED_IDS)
    started = time.perf_counter()
    last_report = started
    applied = skipped = 0
    pending_write: asyncio.Task[None] | None = None
    async with LogReader(settings, client_id=f"{settings.client_id}-replay", max_records=20_000) as reader:
        while True:
            records = await reader.fetch(timeout_ms=100)
            for record in records:
                if (to_offset is not None and record.offset >= to_offset) or \
                        (since_ms is not None and record.event.occurred_at < since_ms):
                    skipped += 1
                    continue
                projector.apply(record)
                applied += 1
            done = reader.caught_up() or (to_offset is not None and reader.all_reached(to_offset))
            if len(projector.batch) >= BATCH_ENTRIES or done:
                if pending_write is not None:
                    await pending_write
                checkpoint = _capped(reader.positions(), to_offset)
                pending_write = asyncio.create_task(_write(projector, store, checkpoint))
            now = time.perf_counter()
            if progress is not None and (now - last_report >= PROGRESS_EVERY_S or done):
                last_report = now
                progress(Progress(applied, now - started, reader.lag()))
            if done:
                break
        if pending_write is not None:
            await pending_write
        return ReplaySummary(applied, skipped, store.count(), time.perf_counter() - started,
                             reader.dead_letter_count, _capped(reader.positions(), to_offset))


async def _write(projector: Projector, store: ProjectionStore, checkpoint: dict[int, int]) -> None:
    batch = projector.take()
    try:
        await asyncio.to_thread(flush, store, batch, checkpoint)
    finally:
        projector.written(batch)


def _capped(positions: dict[int, int], to_offset: int | None) -> dict[int, int]:
    if to_offset is None:
        return positions
    return {partition: min(offset, to_offset) for partition, offset in positions.items()}
