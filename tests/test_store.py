"""The projection store and history: round trips, queries, replay == live, restart from a checkpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import psycopg
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
from projections.postgres import CheckpointMoved, DatabaseUnavailable, PostgresStore
from projections.projector import Projector, flush
from projections.status import TaskRow
from projections.store import STORE_FORMAT, OutdatedStore, ProjectionStore, Store
from tests.support.factories import histories, plan_trip, sample, written
from tests.support.spawn import LEDGER
from tests.support.stack import until


@pytest.fixture
def store(new_store: Callable[[], Store]) -> Store:
    return new_store()


def projected(events: list[TaskEvent], store: Store) -> Projector:
    projector = Projector()
    for offset, event in enumerate(events):
        projector.apply(written(0, offset, event))
    flush(store, projector.take(), {0: len(events)})
    return projector


@hypothesis_settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories())
def test_rows_and_history_round_trip_through_the_store(store: Store, events: list[TaskEvent]) -> None:
    store.clear()  # the store of the test serves every example
    projector = projected(events, store)
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


def test_queries_filter_and_page_in_creation_order(new_store: Callable[[], Store]) -> None:
    events = []
    for i in range(7):
        events.append(sample(TaskCreated, f"t{i}", principal="alice" if i % 2 else "bob",
                             tool="plan_trip" if i < 3 else "approve_expense", occurred_at=1_000 + i))
    events.append(sample(ElicitationRequested, "t1", elicitation_id="e", occurred_at=2_000))
    store = new_store()
    projected(events, store)
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
async def test_replay_into_a_fresh_store_equals_the_live_view(settings: Settings, new_store: Callable[[], Store],
                                                              events: list[TaskEvent]) -> None:
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
    replayed = new_store()
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


def test_rejections_are_refused_or_duplicate_in_the_history(new_store: Callable[[], Store]) -> None:
    events = [sample(TaskCreated, "t"),
              sample(RequestRejected, "t", reason="duplicate: this answer was already applied"),
              sample(RequestRejected, "t", reason="content does not match the requested schema: x")]
    store = new_store()
    projected(events, store)
    assert [e.kind for e in store.history("t")] == ["created", "duplicate", "refused"]


async def test_a_bounded_view_keeps_few_rows_in_memory_and_reads_the_rest_from_the_store(
        settings: Settings, topics: dict, store: Store) -> None:
    settings = replace(settings, cached_rows=5)
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
        listed, after = [], None  # lists are read from the store, each row as the view holds it
        while page := await view.page(view.get("t1").principal, after, 7):
            listed += page
            after = (page[-1].created_at, page[-1].task_id)
        assert sorted(row.task_id for row in listed) == sorted(f"t{i}" for i in range(30))
        assert next(row for row in listed if row.task_id == "t0").status == "working"
    finally:
        await view.stop()
    replayed = ProjectionStore()
    await replay(settings, replayed)
    assert sorted(replayed.rows(), key=lambda r: r.task_id) == sorted(store.rows(), key=lambda r: r.task_id)


async def test_a_new_store_for_a_long_log_is_filled_by_replay_then_followed(
        settings: Settings, topics: dict, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for module in ("ledger.service.live_view", "ledger.service.replay"):  # 480 events stand for a long log
        monkeypatch.setattr(f"{module}.PARALLEL_FROM_EVENTS", 100)
    store = ProjectionStore.temporary()
    async with EventLog(settings) as log:
        await log.append_many([event for i in range(60) for event in plan_trip(f"trip-{i}")])
        view = LiveView(settings, store)
        with caplog.at_level(logging.INFO, logger="ledger.service.live_view"):
            await view.start()
            try:
                await asyncio.wait_for(view.caught_up.wait(), 60)
                await view.reached(await log.append(sample(TaskCreated, "after")), 30)  # followed from the replay's end
            finally:
                await view.stop()
    assert "replayed 480 events into the store" in caplog.text, caplog.text
    replayed = ProjectionStore()
    await replay(settings, replayed)
    assert sorted(store.rows(), key=lambda r: r.task_id) == sorted(replayed.rows(), key=lambda r: r.task_id)
    for task_id in ["after", *(f"trip-{i}" for i in range(60))]:
        assert store.history(task_id) == replayed.history(task_id), task_id
    assert store.checkpoint() == replayed.checkpoint()
    store.close()


def test_a_temporary_store_is_a_file_deleted_when_closed() -> None:
    store = ProjectionStore.temporary()  # a server's without LEDGER_STORE: its rows are not held in memory
    path = Path(store.path)
    projected([sample(TaskCreated, "t")], store)
    assert path.is_file() and store.row("t") is not None
    store.close()
    assert not path.parent.exists()


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


def test_a_database_of_another_format_is_refused_or_rebuilt(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute("CREATE SCHEMA ledger")
        db.execute("SET search_path TO ledger")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('format', '0')")
        db.execute("CREATE TABLE checkpoint (partition INTEGER PRIMARY KEY, next_offset BIGINT NOT NULL)")
        db.execute("INSERT INTO checkpoint VALUES (0, 41)")
    with pytest.raises(OutdatedStore, match=f"format 0, this one reads {STORE_FORMAT}.*ledger replay --database"):
        PostgresStore(database_url)
    store = PostgresStore(database_url, rebuild_outdated=True)
    assert store.checkpoint() == {} and store.history_size() == 0
    projected([sample(TaskCreated, "t")], store)
    store.close()
    assert PostgresStore(database_url).history("t")[0].kind == "created"


def test_a_writer_whose_partition_another_writer_moved_on_writes_nothing(database_url: str) -> None:
    first, second = PostgresStore(database_url), PostgresStore(database_url)
    first.write([], [], {0: 10, 1: 4}, expect={0: 0, 1: 0})
    second.write([], [], {1: 6}, expect={1: 4})  # the second took partition 1 over from its checkpoint
    with pytest.raises(CheckpointMoved, match=r"partitions \[1\] \(now at \{1: 6\}, expected"):
        first.write([sample_row("late")], [], {0: 12, 1: 5}, expect={0: 10, 1: 4})
    assert first.checkpoint() == {0: 10, 1: 6} and first.row("late") is None
    first.write([sample_row("kept")], [], {0: 12}, expect={0: 10})
    assert second.row("kept").task_id == "kept"


def test_a_database_that_cannot_be_reached_is_one_sentence_without_the_password(postgres_cluster: str) -> None:
    url = postgres_cluster.replace("postgres@", "alice:s3cret@").rsplit("/", 1)[0] + "/nowhere"
    with pytest.raises(DatabaseUnavailable) as raised:
        PostgresStore(url)
    message = str(raised.value)
    assert "s3cret" not in message and message.startswith("cannot connect to the projection database "
                                                          "postgresql://alice@127.0.0.1:"), message
    assert "\n" not in message


def sample_row(task_id: str) -> TaskRow:
    projector = Projector()
    projector.apply(written(0, 0, sample(TaskCreated, task_id)))
    return projector.projection.get(task_id)
