"""A worker paused (SIGSTOP) past its session timeout while it runs and holds tasks: another worker
takes its partitions and moves the tasks on; then the paused one resumes (SIGCONT) with runs that
carry on where they were. Whatever it writes after its successor's claim is on the log, ignored by
every fold: no task's outcome is its, and no journaled step counts twice. Runs on either broker."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections import Counter
from dataclasses import replace

import pytest

from ledger.contract.events import TERMINAL_EVENTS, PartitionClaimed, StepRecorded, TaskEvent, TaskStarted
from ledger.kafka.reader import LogReader
from ledger.kafka.records import LogRecord
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from projections.status import StatusProjection
from tests.support.apps.engine_app import app
from tests.support.engine import Engine, running_engine
from tests.support.spawn import spawned
from tests.support.stack import until

pytestmark = pytest.mark.slow

ENGINE_APP = "tests/support/apps/engine_app.py"
RUNNING, WAITING = 12, 12
PAUSE_S = 8.0  # how long each running task waits between its two steps


def actor_of(pid: int) -> str:
    return f"worker:{socket.gethostname()}-{pid}"


async def records(settings: Settings) -> list[LogRecord]:
    async with LogReader(settings) as reader:
        return [record async for batch in reader.catch_up() for record in batch]


async def test_a_paused_worker_that_lost_its_partitions_changes_nothing(settings: Settings, figures) -> None:
    settings = replace(settings, session_timeout_ms=4_000, hot_window_ms=120_000)
    await ensure_topics(settings)
    async with running_engine(app, settings, workers=0) as engine:
        with spawned(["worker", ENGINE_APP], settings, "ledger worker") as paused:
            zombie = actor_of(paused.pid)
            running = [await create(engine, "paced_steps", {"seconds": PAUSE_S}) for _ in range(RUNNING)]
            waiting = [await create(engine, "journaled", {"ledger_file": "/dev/null"}) for _ in range(WAITING)]
            await until(lambda: steps_taken(settings, running, "before"), 60)
            waiting_rows = [await engine.settled(task_id, "input_required") for task_id in waiting]
            paused.send_signal(signal.SIGSTOP)
            paused_at = time.monotonic()
            try:
                with spawned(["worker", ENGINE_APP], settings, "ledger worker") as successor:
                    owner = actor_of(successor.pid)
                    await until(lambda: claimed_everything(settings, owner), 90)
                    taken_over_s = time.monotonic() - paused_at
                    for row in waiting_rows:
                        await engine.service.answer(row.task_id, None, row.pending[0].elicitation_id, "accept",
                                                    {"ok": True}, protocol="test")
                    await until(lambda: started_again(settings, running, owner), 60)
                    # Resume it once its runs' pauses are over, so they write at once, before it can learn
                    # from the log or its group that the partitions are gone (the successor's runs, which
                    # began their pauses later, are still in theirs).
                    await asyncio.sleep(max(0.0, paused_at + PAUSE_S + 0.5 - time.monotonic()))
                    paused.send_signal(signal.SIGCONT)
                    for task_id in running + waiting:
                        await engine.settled(task_id, "completed")
                    await until(lambda: quiet(settings, zombie), 60)
            finally:
                paused.send_signal(signal.SIGCONT)
    log = await records(settings)
    stale = stale_writes(log)
    counted = [r.event for r in log if (r.partition, r.offset) not in stale]
    figures(f"{RUNNING} running and {WAITING} waiting tasks on a worker paused for {time.monotonic() - paused_at:.1f} s: "
            f"its successor claimed every partition {taken_over_s:.1f} s after the pause and completed them all; "
            f"the paused worker, resumed, wrote {len(stale)} events after losing its partitions, all ignored "
            f"({dict(Counter(stale.values()))})")
    assert stale and {actor for actor, _ in stale.values()} == {zombie}, "nothing stale was written: no fence test"
    tasks = running + waiting
    ends = Counter(e.task_id for e in counted if isinstance(e, TERMINAL_EVENTS))
    assert ends == Counter({task_id: 1 for task_id in tasks})
    steps = Counter((e.task_id, e.sequence) for e in counted if isinstance(e, StepRecorded))
    assert steps == Counter({(task_id, sequence): 1 for task_id in tasks for sequence in (0, 1)}), \
        "a journaled step counted twice, or its owner never wrote it"
    what_counts = fold(counted)
    for task_id in tasks:
        assert engine.service.view.get(task_id) == what_counts.get(task_id)
        assert what_counts.get(task_id).status == "completed"
    # Had the folds taken the paused worker's writes, they would have come first: its step results
    # would have been the journal's (the owner's run would not have taken the step) or its end the outcome.
    firsts = {}
    for record in log:
        event = record.event
        if isinstance(event, StepRecorded):
            firsts.setdefault((event.task_id, event.sequence), record)
        elif isinstance(event, TERMINAL_EVENTS):
            firsts.setdefault(event.task_id, record)
    assert any((r.partition, r.offset) in stale for r in firsts.values()), "the fence was not needed: no test"


def stale_writes(log: list[LogRecord]) -> dict[tuple[int, int], tuple[str, str]]:
    """Records ((partition, offset) -> (actor, type)) a worker wrote on a partition after another worker
    claimed it, before claiming it again itself: what the fence must make count for nothing. By place,
    not by event id: a worker that claims the partition back writes the same transition again with
    the same derived id, and that copy counts."""
    owners: dict[int, str] = {}
    stale = {}
    for record in log:
        event = record.event
        if isinstance(event, PartitionClaimed):
            owners[record.partition] = event.actor
        elif event.actor.startswith("worker:") and owners.get(record.partition, event.actor) != event.actor:
            stale[record.partition, record.offset] = (event.actor, type(event).__name__)
    return stale


def fold(events: list[TaskEvent]) -> StatusProjection:
    projection = StatusProjection()
    for event in events:
        projection.apply(event)
    return projection


async def create(engine: Engine, tool: str, arguments: dict) -> str:
    row = await engine.service.create(tool, arguments, principal=None, ttl_ms=None, protocol="test")
    return row.task_id


async def steps_taken(settings: Settings, task_ids: list[str], name: str) -> bool:
    done = {r.event.task_id for r in await records(settings) if isinstance(r.event, StepRecorded)
            and r.event.name == name}
    return set(task_ids) <= done


async def claimed_everything(settings: Settings, owner: str) -> bool:
    claimed = {r.partition for r in await records(settings)
               if isinstance(r.event, PartitionClaimed) and r.event.actor == owner}
    return claimed == set(range(settings.partitions))


async def started_again(settings: Settings, task_ids: list[str], owner: str) -> bool:
    restarted = {r.event.task_id for r in await records(settings) if r.event.actor == owner
                 and isinstance(r.event, TaskStarted)}
    return set(task_ids) <= restarted


async def quiet(settings: Settings, actor: str) -> bool:
    """True once ``actor`` has written nothing for two seconds."""
    last = max((r.event.occurred_at for r in await records(settings) if r.event.actor == actor), default=0)
    return time.time() * 1000 - last > 2_000
