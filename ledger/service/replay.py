"""Rebuilding projections from the log: ``ledger replay`` and the read commands that fold the topic.

The fold is the server's (``projections.projector``), so a replayed store holds exactly what a
server that followed the log live holds. Writes go to SQLite in large batches, on the event loop's
thread: a writer thread beside the fold gained nothing, because SQLite's Python binding takes the
GIL back for every row and the fold holds it, so the writer advanced only while the fold waited
(a 2-process replay of a million events: 9.5 s with the writer thread, 9.1 s without).

A task's events all sit in one partition, so partitions fold independently: ``build_store`` (what
``ledger replay`` runs) gives each of several processes a share of the partitions, all writing into
one store being built. Decoding and folding are CPU-bound Python: processes, not threads, use more
cores.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.contract.events import PartitionClaimed
from ledger.kafka.reader import LogReader
from ledger.settings import Settings
from projections.postgres import BUILDING_SCHEMA, PostgresStore
from projections.projector import REMEMBERED_EVENT_IDS, Projector, flush
from projections.store import ProjectionStore, Store

Target = Path | str  # a SQLite file, or a PostgreSQL database's URL

BATCH_ENTRIES = 50_000
REPLAY_ROWS = 50_000  # task rows held in memory; the store holds them all
PROGRESS_EVERY_S = 0.5
CHILDREN_POLL_S = 0.02  # how soon a parallel replay notices its processes are done
# Below this many events one process is done before more processes would have started (~1 s each).
PARALLEL_FROM_EVENTS = 100_000


class ReplayFailed(RuntimeError):
    """A process of a parallel replay stopped with an error."""


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


async def replay(settings: Settings, store: Store, *, partitions: Collection[int] | None = None,
                 status: bool = True, history: bool = True, since_ms: int | None = None,
                 to_offset: int | None = None, progress: Callable[[Progress], None] | None = None) -> ReplaySummary:
    """Fold the topic (or its ``partitions``) from offset 0 into ``store`` until caught up (or every
    partition reached ``to_offset``).

    ``since_ms`` leaves out events that occurred before it; ``to_offset`` stops each partition there.
    """
    with no_collections():
        return await _replay(settings, store, partitions, status, history, since_ms, to_offset, progress)


@contextmanager
def no_collections() -> Iterator[None]:
    """Pause the cyclic garbage collector: a replay allocates millions of objects and makes no cycles
    of its own (the client's few per fetch wait for the next collection), and each collection walks
    every row and event held: 9 % of a replay's CPU even at a hundredth of the default frequency."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def _replay(settings: Settings, store: Store, partitions: Collection[int] | None, status: bool,
                  history: bool, since_ms: int | None, to_offset: int | None,
                  progress: Callable[[Progress], None] | None) -> ReplaySummary:
    projector = Projector(status=status, history=history, store=store, capacity=REPLAY_ROWS,
                          remembered_ids=REMEMBERED_EVENT_IDS)
    started = time.perf_counter()
    last_report = started
    applied = skipped = 0
    async with LogReader(settings, partitions=partitions, client_id=f"{settings.client_id}-replay",
                         max_records=20_000) as reader:
        while True:
            records = await reader.fetch(timeout_ms=100)
            for record in records:
                # Older claims still decide whose later events count.
                if (to_offset is not None and record.offset >= to_offset) or (
                        since_ms is not None and record.event.occurred_at < since_ms
                        and not isinstance(record.event, PartitionClaimed)):
                    skipped += 1
                    continue
                projector.apply(record)
                applied += 1
            done = reader.caught_up() or (to_offset is not None and reader.all_reached(to_offset))
            if len(projector.batch) >= BATCH_ENTRIES or done:
                # On the loop's thread, between fetches: see the module's docstring.
                batch = projector.take()
                flush(store, batch, _capped(reader.positions(), to_offset))
                projector.written(batch)
            now = time.perf_counter()
            if progress is not None and (now - last_report >= PROGRESS_EVERY_S or done):
                last_report = now
                progress(Progress(applied, now - started, reader.lag()))
            if done:
                break
        return ReplaySummary(applied, skipped, store.count(), time.perf_counter() - started,
                             reader.dead_letter_count, _capped(reader.positions(), to_offset))


async def build_store(settings: Settings, target: Target, *, processes: int | None = None,
                      progress: Callable[[Progress], None] | None = None, fork: bool = True,
                      **options: Any) -> ReplaySummary:
    """Replay into a new store (``building``: a file, or a database's building schema) with ``processes``
    processes (at most one a partition), each folding a share of the partitions; ``options`` as for
    ``replay``. The store gets its query indexes once every share is in.

    ``fork=False`` spawns the processes: what a caller with threads at work (a server) needs, since a
    child forked from it can inherit a lock one of them held and wait for it forever.

    ``processes=None`` chooses: the CPUs this process may use, or one for a topic of fewer than
    ``PARALLEL_FROM_EVENTS`` events.
    """
    if processes is None or processes > 1:
        partitions, events = await log_size(settings)
        if processes is None:
            processes = len(os.sched_getaffinity(0)) if events >= PARALLEL_FROM_EVENTS else 1
        if processes > 1 and len(partitions) > 1:
            return await _replay_in_processes(settings, target, partitions, processes, progress, fork, options)
    store = building(target)
    try:
        summary = await replay(settings, store, progress=progress, **options)
        store.index()
    finally:
        store.close()
    return summary


async def log_size(settings: Settings) -> tuple[list[int], int]:
    """The topic's partitions and how many events they hold."""
    async with LogReader(settings, client_id=f"{settings.client_id}-replay", max_records=1) as reader:
        return reader.partitions(), sum((await reader.end_offsets()).values())


async def _replay_in_processes(settings: Settings, target: Target, partitions: list[int], processes: int,
                               progress: Callable[[Progress], None] | None, fork: bool,
                               options: dict[str, Any]) -> ReplaySummary:
    started = time.perf_counter()
    shares = [partitions[i::processes] for i in range(min(processes, len(partitions)))]
    # Forked, on Linux, unless the caller has threads at work (see build_store): a spawned process
    # imports ledger again first (0.7 s each, a tenth of a million-event replay); the child resets the
    # signals it inherits (see _replay_share).
    context = multiprocessing.get_context("fork" if fork and sys.platform == "linux" else "spawn")
    counts = context.Array("q", 2 * len(shares), lock=False)  # events, lag of each share
    results = context.Queue()
    children = [context.Process(target=_replay_share, name=f"ledger-replay-{i}",
                                args=(settings, target, share, options, counts, i, results))
                for i, share in enumerate(shares)]
    # Made here, before the shares open it: SQLite refuses at once ("database is locked", without
    # waiting) a connection that switches a file to WAL while another does the same.
    building(target).close()
    for child in children:
        child.start()
    summaries: dict[int, ReplaySummary | str] = {}
    last_report = started
    try:
        while len(summaries) < len(children):
            await asyncio.sleep(CHILDREN_POLL_S)
            exited = not any(child.is_alive() for child in children)
            _collect(results, summaries)  # after is_alive: a share's result is queued before it exits
            now = time.perf_counter()
            # A share reports once it has fetched; before every share has, the lag would read too low.
            reported = all(counts[2 * i] or counts[2 * i + 1] for i in range(len(shares)))
            if progress is not None and ((reported and now - last_report >= PROGRESS_EVERY_S)
                                         or len(summaries) == len(children)):
                last_report = now
                progress(Progress(sum(counts[0::2]), now - started, sum(counts[1::2])))
            if exited and len(summaries) < len(children):
                raise ReplayFailed(f"replay processes exited with codes {[c.exitcode for c in children]}")
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
            child.join()
    failures = [outcome for outcome in summaries.values() if isinstance(outcome, str)]
    if failures:
        raise ReplayFailed("; ".join(failures))
    done = [outcome for outcome in summaries.values() if isinstance(outcome, ReplaySummary)]
    store = building(target)
    try:
        store.index()
        tasks = store.count()
    finally:
        store.close()
    checkpoint = {p: o for summary in done for p, o in summary.checkpoint.items()}
    return ReplaySummary(sum(s.events for s in done), sum(s.skipped for s in done), tasks,
                         time.perf_counter() - started, sum(s.dead_letters for s in done), checkpoint)


def _collect(results: Any, summaries: dict[int, ReplaySummary | str]) -> None:
    while True:
        try:
            index, outcome = results.get_nowait()
        except queue.Empty:
            return
        summaries[index] = outcome


def _replay_share(settings: Settings, target: Target, partitions: list[int], options: dict[str, Any],
                  counts: Any, index: int, results: Any) -> None:
    """One process of ``_replay_in_processes``: its partitions into the shared store being built."""

    def report(progress: Progress) -> None:
        counts[2 * index], counts[2 * index + 1] = progress.events, progress.lag

    # A forked child keeps the parent's handlers; it is stopped by the parent's terminate() alone.
    # Ctrl-C reaches the whole process group, and the parent, interrupted, terminates its children:
    # left to raise KeyboardInterrupt, each child would print a traceback of its own first.
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    # For good: the process ends with its share, and turning collection back on (no_collections)
    # would walk every object the share made once more on the way out (0.16 s of a 9 s replay).
    gc.disable()
    store = building(target)
    try:
        outcome: ReplaySummary | str = asyncio.run(replay(settings, store, partitions=partitions,
                                                          progress=report, **options))
    except Exception as exc:
        outcome = f"partitions {partitions}: {type(exc).__name__}: {exc}"
    finally:
        store.close()
    results.put((index, outcome))


def building(target: Target) -> Store:
    """The store being built at ``target``: a SQLite file, or a PostgreSQL database (its URL) whose
    building schema takes the live one's place when complete."""
    if isinstance(target, Path):
        return ProjectionStore(target, building=True)
    return PostgresStore(target, schema=BUILDING_SCHEMA, building=True)


def _capped(positions: dict[int, int], to_offset: int | None) -> dict[int, int]:
    if to_offset is None:
        return positions
    return {partition: min(offset, to_offset) for partition, offset in positions.items()}
