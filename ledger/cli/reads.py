"""The read commands: ``ledger replay``, ``tasks``, ``history``, ``tail`` and ``topics``.

They read the log (or a store ``ledger replay`` built) and print for people: aligned tables,
progress on stderr while they fold a topic, ``--json`` where a program reads the output.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition

from ledger.contract.events import TaskStarted
from ledger.engine.app import App
from ledger.engine.check import check, open_journals
from ledger.kafka.consumer import end_offsets, topic_partitions
from ledger.kafka.profiles import broker_profile, check_bootstrap
from ledger.kafka.reader import LogReader
from ledger.kafka.records import LogRecord
from ledger.kafka.security import connection
from ledger.service.queries import row_json
from ledger.service.replay import PROGRESS_EVERY_S, Progress, ReplaySummary, Target, build_store, building, replay
from ledger.settings import Settings
from projections.fence import Fence
from projections.history import Entry, entry
from projections.postgres import PostgresStore
from projections.status import TaskRow, transition
from projections.store import EVERYONE, ProjectionStore

# Records ``ledger tail --from-beginning`` holds per partition while it merges the log in time order.
BACKLOG_HELD = 2_000


class NoSuchTask(LookupError):
    pass


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for line in (headers, ["-" * w for w in widths], *rows):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip(), file=out)


def progress_printer(label: str, err: TextIO = sys.stderr) -> Callable[[Progress], None]:
    interactive = err.isatty()

    def show(progress: Progress) -> None:
        line = f"{label}: {progress.events:,} events  {progress.rate:,.0f}/s  lag {progress.lag:,}"
        print(("\r" + line) if interactive else line, end="" if interactive else "\n", file=err, flush=True)

    return show


async def run_replay(settings: Settings, target: Target, *, projection: str, since_ms: int | None,
                     to_offset: int | None, processes: int | None = None, out: TextIO = sys.stdout,
                     err: TextIO = sys.stderr) -> ReplaySummary:
    """Build a fresh store beside ``target`` (a file, or a PostgreSQL database's URL) and put it in
    place when complete: readers never see half."""
    beside = target.with_name(target.name + ".building") if isinstance(target, Path) else target
    _discard(beside)  # left by a replay that was killed
    options = {"status": projection in ("status", "all"), "history": projection in ("history", "all"),
               "since_ms": since_ms, "to_offset": to_offset}
    try:
        summary = await build_store(settings, beside, processes=processes,
                                    progress=progress_printer("replay", err), **options)
    except BaseException:  # an error or Ctrl-C: half a store is of no use to anyone
        _discard(beside)
        raise
    store = building(beside)
    try:
        store.set_meta("topic", settings.events_topic)
        if isinstance(store, PostgresStore):
            store.take_place_of()
        where = store.path
    finally:
        store.close()
    if err.isatty():
        print(file=err)
    if isinstance(target, Path):
        os.replace(beside, target)
        where = str(target)
    tasks = f"{summary.tasks:,} task{'s' * (summary.tasks != 1)}"
    print(f"replayed {summary.events:,} events of {settings.events_topic} into {where} in {summary.seconds:.1f} s: "
          f"{summary.rate:,.0f} events/s; {tasks}, {summary.skipped:,} events left out, "
          f"{summary.dead_letters:,} undecodable records skipped", file=out)
    print(checkpoint_line(summary.checkpoint), file=out)
    return summary


def _discard(target: Target) -> None:
    """A store being built, and what SQLite keeps beside its file."""
    if isinstance(target, Path):
        _remove_store_files(target)
    else:
        store = building(target)
        try:
            store.clear()
        finally:
            store.close()


def _remove_store_files(path: Path) -> None:
    for name in (path, *(Path(f"{path}-{suffix}") for suffix in ("wal", "shm", "journal"))):
        name.unlink(missing_ok=True)


def checkpoint_line(checkpoint: dict[int, int]) -> str:
    """What a store reached, in one line however many partitions (the store keeps each offset)."""
    if not checkpoint:
        return "checkpoint: no partition read"
    offsets = checkpoint.values()
    low, high = min(offsets), max(offsets)
    reach = f"offset {low:,}" if low == high else f"offsets {low:,} to {high:,}"
    count = len(checkpoint)
    return (f"checkpoint: {count} partition{'s' * (count != 1)} read to {reach} ({sum(offsets):,} records in all; "
            "the store keeps each partition's offset)")


async def open_store(settings: Settings, path: Path | None, err: TextIO = sys.stderr) -> ProjectionStore:
    """The store at ``path``, or (without one) the topic folded into memory now."""
    if path is not None:
        if not path.exists():
            raise FileNotFoundError(f"no projection store at {path}; build one with `ledger replay --store {path}`")
        return ProjectionStore(path)
    store = ProjectionStore()
    await replay(settings, store, progress=progress_printer("reading the log", err) if err.isatty() else None)
    if err.isatty():
        print("\r" + " " * 70 + "\r", end="", file=err)
    return store


def print_tasks(store: ProjectionStore, *, status: str | None, principal: str | None, tool: str | None,
                as_json: bool, out: TextIO = sys.stdout) -> int:
    rows: list[TaskRow] = []
    after = None
    while True:
        page = store.tasks(principal=EVERYONE if principal is None else principal, status=status, tool=tool,
                           after=after, limit=1_000)
        rows.extend(page)
        if len(page) < 1_000:
            break
        after = (page[-1].created_at, page[-1].task_id)
    if as_json:
        for row in rows:
            print(json.dumps(row_json(row)), file=out)
        return len(rows)
    table(["task", "tool", "principal", "status", "created", "updated", "due", "message"],
          [[r.task_id, r.tool, r.principal or "-", r.status, when(r.created_at), when(r.last_updated_at),
            "-" if r.due is None else when(r.due), (r.status_message or "")[:60]] for r in rows], out)
    print(f"{len(rows)} task{'s' * (len(rows) != 1)}", file=out)
    return len(rows)


def print_history(store: ProjectionStore, task_id: str, *, as_json: bool, out: TextIO = sys.stdout) -> None:
    row = store.row(task_id)
    entries = store.history(task_id)
    if row is None and not entries:
        raise NoSuchTask(f"no task {task_id!r} on the log")
    if as_json:
        for item in entries:
            print(json.dumps(item.as_json()), file=out)
        return
    if row is not None:
        print(f"task {row.task_id}  {row.tool}  principal {row.principal or '-'}  status {row.status}", file=out)
    table(["when", "what", "detail", "who", "path", "log"],
          [[when(e.occurred_at), e.kind, e.summary, e.actor, e.protocol or "", f"{e.partition}@{e.offset}"]
           for e in entries], out)


def entry_line(item: Entry) -> str:
    path = f"  [{item.protocol}]" if item.protocol else ""
    return f"{when(item.occurred_at)}  {item.task_id}  {item.kind:<16} {item.summary}  ({item.actor}){path}"


async def tail(settings: Settings, *, from_beginning: bool, as_json: bool, out: TextIO = sys.stdout,
               limit: int | None = None) -> None:
    """Print events as they are appended; with ``from_beginning``, the events already on the log
    first, in the order they occurred across partitions."""
    printed = 0

    def show(record: LogRecord) -> bool:
        """Print ``record``; True once ``limit`` lines are printed."""
        nonlocal printed
        item = entry(record.event, record.partition, record.offset)
        print(json.dumps(item.as_json()) if as_json else entry_line(item), file=out, flush=True)
        printed += 1
        return limit is not None and printed >= limit

    async with LogReader(settings, client_id=f"{settings.client_id}-tail") as reader:
        if from_beginning:
            async for record in in_time_order(reader):
                if show(record):
                    return
        else:
            async for _ in reader.catch_up():
                pass
        async for batch in reader.follow():  # paced: an idle follower fetches rarely
            for record in batch:
                if show(record):
                    return


async def in_time_order(reader: LogReader) -> AsyncIterator[LogRecord]:
    """The events on the log up to each partition's end, merged across partitions by the time they
    occurred (within a partition, log order).

    A record is released once every partition not yet read to its end holds one, so that none
    earlier can still come; a partition holding ``BACKLOG_HELD`` records is not fetched until some
    are released, which bounds memory however long the log is.
    """
    held: dict[int, deque[LogRecord]] = {p: deque() for p in reader.partitions()}
    while True:
        for record in await reader.fetch():
            held[record.partition].append(record)
        for partition, records in held.items():
            reader.hold(partition, len(records) >= BACKLOG_HELD)
        while all(records or reader.read_to_end(partition) for partition, records in held.items()):
            heads = [records for records in held.values() if records]
            if not heads:
                for partition in held:
                    reader.hold(partition, False)
                return
            earliest = min(heads, key=lambda records: (records[0].event.occurred_at, records[0].partition))
            yield earliest.popleft()


async def describe_topics(settings: Settings, *, show_all: bool = False,
                          out: TextIO = sys.stdout) -> dict[str, dict[int, tuple[int, int | None]]]:
    """Each ledger topic's partitions with their end offsets; for the events topic, the worker group's
    committed offsets and the open tasks after them (waiting for people, running, not started)."""
    described: dict[str, dict[int, tuple[int, int | None]]] = {}
    group = f"{settings.topic_prefix}.workers"
    await check_bootstrap(settings)
    consumer = AIOKafkaConsumer(**connection(settings), group_id=group, enable_auto_commit=False,
                                client_id=f"{settings.client_id}-topics")
    await consumer.start()
    try:
        for topic in (settings.events_topic, settings.dead_letter_topic):
            ends = await _end_offsets(settings, topic)
            committed = {}
            if topic == settings.events_topic:
                for partition in ends:
                    committed[partition] = await consumer.committed(TopicPartition(topic, partition))
            described[topic] = {p: (end, committed.get(p)) for p, end in sorted(ends.items())}
    finally:
        await consumer.stop()
    events = described[settings.events_topic]
    uncommitted = {p: end - (committed or 0) for p, (end, committed) in events.items() if end > (committed or 0)}
    open_tasks = await _open_tasks(settings, {p: events[p][1] or 0 for p in uncommitted})
    for topic, partitions in described.items():
        total = sum(end for end, _ in partitions.values())
        shown = {p: v for p, v in partitions.items() if show_all or v[0] > 0}
        hidden = len(partitions) - len(shown)
        note = f" ({hidden} empty, not shown: --all shows them)" if hidden and shown else ""
        print(f"{topic}: {len(partitions)} partitions, {total:,} events{note}", file=out)
        if not shown:
            continue
        if topic != settings.events_topic:
            table(["partition", "end offset"], [[str(p), f"{end:,}"] for p, (end, _) in shown.items()], out)
            continue
        rows = []
        for partition, (end, committed) in shown.items():
            tasks = open_tasks.get(partition, Counter())
            rows.append([str(partition), f"{end:,}", "" if committed is None else f"{committed:,}",
                         f"{uncommitted.get(partition, 0):,}",
                         *(f"{tasks[state]:,}" for state in OPEN_STATES)])
        table(["partition", "end offset", f"committed ({group})", "uncommitted", *OPEN_STATES], rows, out)
    print("Uncommitted events are normal: a partition's commit sits on a worker's claim at or before its oldest "
          "open task, where a successor starts reading, so a task waiting for people holds every later event "
          "uncommitted. Workers are behind where tasks stay not started.", file=out)
    return described


OPEN_STATES = ("waiting for people", "running", "not started")


async def _open_tasks(settings: Settings, committed: dict[int, int]) -> dict[int, Counter[str]]:
    """Per partition, the tasks after its committed offset that have not ended, by ``OPEN_STATES``.

    Every task that has not ended was created at or after its partition's committed offset (the
    workers commit no further), so reading from there finds them all."""
    if not committed:
        return {}
    rows: dict[str, tuple[int, TaskRow]] = {}
    started: set[str] = set()
    fence = Fence()
    async with LogReader(settings, checkpoint=committed, partitions=committed,
                         client_id=f"{settings.client_id}-topics") as reader:
        async for batch in reader.catch_up():
            for record in batch:
                if not fence.admits(record):
                    continue
                event = record.event
                if isinstance(event, TaskStarted):
                    started.add(event.task_id)
                previous = rows.get(event.task_id)
                row = transition(previous[1] if previous else None, event)
                if row is not None:
                    rows[event.task_id] = (record.partition, row)
    counts: dict[int, Counter[str]] = {}
    for task_id, (partition, row) in rows.items():
        if row.terminal:
            continue
        state = ("waiting for people" if row.status == "input_required"
                 else "running" if task_id in started else "not started")
        counts.setdefault(partition, Counter())[state] += 1
    return counts


async def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(**connection(settings), enable_auto_commit=False,
                                client_id=f"{settings.client_id}-topics")
    await consumer.start()
    try:
        partitions = await topic_partitions(consumer, topic)
        return await end_offsets(consumer, await broker_profile(settings), topic, dict.fromkeys(partitions, 0))
    finally:
        await consumer.stop()


async def check_app(settings: Settings, app: App, source: str, *, timeout_s: float, out: TextIO = sys.stdout,
                    err: TextIO = sys.stderr) -> int:
    """``ledger check``: each open task's journal re-run against ``app``; 1 when any differs, else 0."""
    show = progress_printer("reading the log", err)
    shown = False

    async def batches(reader: LogReader) -> AsyncIterator[list[LogRecord]]:
        nonlocal shown
        loop = asyncio.get_running_loop()
        started = last = loop.time()
        events = 0
        async for batch in reader.catch_up():
            events += len(batch)
            if loop.time() - last >= PROGRESS_EVERY_S:
                last, shown = loop.time(), True
                show(Progress(events, last - started, reader.lag()))
            yield batch

    async with LogReader(settings) as reader:
        journals = await open_journals(batches(reader))
    if shown and err.isatty():
        print(file=err)  # past the progress line
    verdicts = [await check(app, journal, timeout_s) for journal in journals]
    differing = [v for v in verdicts if v.difference is not None]
    if differing:
        table(["task", "tool", "first difference"], [[v.task_id, v.tool, v.difference] for v in differing], out)
    print(f"{len(journals)} open task{'s' * (len(journals) != 1)} checked against {source}: "
          f"{len(differing) or 'none'} differ{'s' * (len(differing) == 1)}", file=out)
    return 1 if differing else 0
