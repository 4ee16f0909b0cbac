"""The projection store and history: round trips, queries, replay == live, restart from a checkpoint."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings

from ledger.contract.events import (
    EVENT_TYPES,
    ElicitationRequested,
    PartitionClaimed,
    RequestRejected,
    ResponseSubmitted,
    TaskCreated,
    TaskEvent,
)
from ledger.kafka.appender import EventLog
from ledger.kafka.topics import ensure_topics
from ledger.service.live_view import LiveView
from ledger.service.replay import replay
from ledger.settings import Settings
from projections.history import describe
from projections.projector import Projector, flush
from projections.store import STORE_FORMAT, OutdatedStore, ProjectionStore
from tests.support.factories import histories, sample, written
from tests.support.spawn import LEDGER
from tests.support.stack import until


def projected(events: list[TaskEvent]) -> tuple[Projector, ProjectionStore]:
    projector = Projector()
    for offset, event in enumerate(events):
        projector.apply(written(0, offset, event))
    store = ProjectionStore()
    flush(store, projector.take(), {0: len(events)})
    return projector, store


@given(histories())
def test_rows_and_history_round_trip_through_the_store(events: list[TaskEvent]) -> None:
    projector, store = projected(events)
    assert {row.task_id: row for row in store.rows()} == projector.projection.rows
    assert store.checkpoint() == {0: len(events)}
    for task_id in {e.task_id for e in events}:
        timeline = store.history(task_id)
        unique = list({e.event_id: e for e in events if e.task_id == task_id and not isinstance(e, PartitionClaimed)})
        assert [entry.event_id for entry in timeline] == unique


def test_every_event_type_has_a_history_entry() -> None:
    for cls in EVENT_TYPES.values():
        kind, summary = describe(sample(cls, "t"))
        assert kind and isinstance(summary, str)


def test_queries_filter_and_page_in_creation_order() -> None:
    events = []
    for i in range(7):
        events.append(sample(TaskCreated, f"t{i}", principal="alice" if i % 2 else "bob",
                             tool="plan_trip" if i < 3 else "approve_expense", occurred_at=1_000 + i))
    events.append(sample(ElicitationRequested, "t1", elicitation_id="e", occurred_at=2_000))
    _, store = projected(events)
    assert [r.task_id for r in store.tasks(principal="alice")] == ["t1", "t3", "t5"]
    assert [r.task_id for r in store.tasks(tool="plan_trip", limit=2)] == ["t0", "t1"]
    assert [r.task_id for r in store.tasks(after=(1_001, "t1"), limit=2)] == ["t2", "t3"]
    assert [r.task_id for r in store.tasks(status="input_required")] == ["t1"]
    assert [r.task_id for r in store.tasks(since=1_005)] == ["t5", "t6"]
    assert [(row.task_id, p.elicitation_id) for row, p in store.pending_older_than(500, now_ms=2_600)] == [("t1", "e")]
    assert store.pending_older_than(500, now_ms=2_400) == []


async def append_with_garbage(settings: Settings, events: list[TaskEvent]) -> None:
    async with EventLog(settings) as log:
        await log.append_many(events)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(settings.events_topic, b"\x00not an event", key=b"garbage")
    finally:
        await producer.stop()


@hypothesis_settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories())
async def test_replay_into_a_fresh_store_equals_the_live_view(settings: Settings, events: list[TaskEvent]) -> None:
    settings = replace(settings, topic_prefix=f"replay-{uuid.uuid4().hex[:10]}")
    await ensure_topics(settings)
    live_store = ProjectionStore()
    view = LiveView(settings, live_store)
    await view.start()
    try:
        await view.caught_up.wait()
        duplicated = events + events[: len(events) // 3]  # producer retries land events twice
        await append_with_garbage(settings, duplicated)
        await until(lambda: sum(live_store.checkpoint().values()) >= len(duplicated) + 1,  # every record, garbage too
                    30, lambda: "the live view did not see every event")
    finally:
        await view.stop()
    replayed = ProjectionStore()
    summary = await replay(settings, replayed)
    assert summary.dead_letters == 1
    assert sorted(replayed.rows(), key=lambda r: r.task_id) == sorted(live_store.rows(), key=lambda r: r.task_id)
    for task_id in {e.task_id for e in events}:
        assert replayed.history(task_id) == live_store.history(task_id)
    assert replayed.checkpoint() == live_store.checkpoint()


async def test_a_restarted_view_resumes_from_its_checkpoint(settings: Settings, topics: dict, tmp_path: Path) -> None:
    path = tmp_path / "projections.sqlite"
    first = [sample(TaskCreated, f"t{i}") for i in range(20)]
    later = [sample(ElicitationRequested, f"t{i}", elicitation_id=f"e{i}") for i in range(20)]
    async with EventLog(settings) as log:
        await log.append_many(first)
        view = LiveView(settings, ProjectionStore(path))
        await view.start()
        await view.caught_up.wait()
        await view.stop()
        view.store.close()
        await log.append_many(later)
    store = ProjectionStore(path)
    resumed = LiveView(settings, store)
    await resumed.start()
    try:
        assert resumed.task_count() == 20  # known from the store before reading on
        await resumed.caught_up.wait()
        assert resumed.get("t3").status == "input_required"
    finally:
        await resumed.stop()
    assert store.history_size() == 40
    assert [e.kind for e in store.history("t3")] == ["created", "asked"]


async def test_a_store_built_from_another_topic_is_rebuilt(settings: Settings, topics: dict, tmp_path: Path) -> None:
    path = tmp_path / "projections.sqlite"
    stale = ProjectionStore(path)
    projector = Projector()
    projector.apply(written(0, 0, sample(TaskCreated, "ghost")))
    flush(stale, projector.take(), {0: 1})
    stale.close()
    async with EventLog(settings) as log:
        await log.append(sample(ResponseSubmitted, "real"))
        await log.append(sample(TaskCreated, "real"))
    store = ProjectionStore(path)
    view = LiveView(settings, store)
    await view.start()
    try:
        await view.caught_up.wait()
        assert view.get("ghost") is None and view.get("real") is not None
    finally:
        await view.stop()
    assert store.row("ghost") is None


def test_rejections_are_refused_or_duplicate_in_the_history() -> None:
    events = [sample(TaskCreated, "t"),
              sample(RequestRejected, "t", reason="duplicate: this answer was already applied"),
              sample(RequestRejected, "t", reason="content does not match the requested schema: x")]
    _, store = projected(events)
    assert [e.kind for e in store.history("t")] == ["created", "duplicate", "refused"]


async def test_a_bounded_view_keeps_few_rows_in_memory_and_reads_the_rest_from_the_store(
        settings: Settings, topics: dict) -> None:
    settings = replace(settings, cached_rows=5)
    store = ProjectionStore()
    view = LiveView(settings, store)
    await view.start()
    try:
        await view.caught_up.wait()
        async with EventLog(settings) as log:
            await log.append_many([sample(TaskCreated, f"t{i}") for i in range(30)])
            await log.append_many([sample(ElicitationRequested, f"t{i}", elicitation_id=f"e{i}") for i in range(30)])
            position = await log.append(sample(ResponseSubmitted, "t0", elicitation_id="e0"))
        await view.reached(position, 30)
        assert len(view.projection.rows) <= 5
        assert view.get("t0").status == "working"  # answered after it had left the cache
        assert all(view.get(f"t{i}").status == "input_required" for i in range(1, 30))
        assert view.task_count() == 30
    finally:
        await view.stop()
    replayed = ProjectionStore()
    await replay(settings, replayed)
    assert sorted(replayed.rows(), key=lambda r: r.task_id) == sorted(store.rows(), key=lambda r: r.task_id)


def test_a_store_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="the directory .*missing does not exist"):
        ProjectionStore(tmp_path / "missing" / "ledger.sqlite")


def test_replay_into_a_missing_directory_is_one_sentence(tmp_path: Path) -> None:
    run = subprocess.run(LEDGER + ["replay", "--store", str(tmp_path / "missing" / "x.sqlite")], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "LEDGER_BOOTSTRAP": "127.0.0.1:1"})
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"the directory {tmp_path / 'missing'} does not exist" in run.stderr


def test_a_store_of_another_format_is_refused_or_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE history (event_id TEXT, summary TEXT, detail_json TEXT)")
    old.execute("CREATE TABLE checkpoint (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL)")
    old.execute("INSERT INTO checkpoint VALUES (0, 41)")
    old.commit()
    old.close()
    with pytest.raises(OutdatedStore, match=f"format 0, this one reads {STORE_FORMAT}.*ledger replay --store"):
        ProjectionStore(path)
    store = ProjectionStore(path, rebuild_outdated=True)  # what a server does: read the log again
    assert store.checkpoint() == {} and store.history_size() == 0
    projector = Projector()
    projector.apply(written(0, 0, sample(TaskCreated, "t")))
    flush(store, projector.take(), {0: 1})
    store.close()
    assert ProjectionStore(path).history("t")[0].kind == "created"
