"""The read commands as a user runs them: ``ledger history``, ``tasks``, ``replay``, ``topics``, ``tail``."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ledger.contract.events import (
    TaskCompleted,
    TaskCreated,
    TaskStarted,
)
from ledger.kafka.appender import EventLog
from ledger.settings import Settings
from projections.postgres import PostgresStore
from projections.store import ProjectionStore
from tests.support.factories import plan_trip, sample
from tests.support.spawn import LEDGER, role_environment
from tests.support.stack import until


def ledger(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(LEDGER + list(args), capture_output=True, text=True, timeout=120,
                          env=role_environment(settings))


@pytest.fixture
async def trips(settings: Settings, topics: dict) -> list[str]:
    async with EventLog(settings) as log:
        await log.append_many(plan_trip("trip-1") + plan_trip("trip-2")[:3])
    return ["trip-1", "trip-2"]


async def test_history_shows_both_questions_and_answers_with_their_paths(settings: Settings, trips: list[str]) -> None:
    shown = ledger(settings, "history", "trip-1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "plan_trip" in lines[0] and "completed" in lines[0]
    asked = [line for line in lines if "  asked  " in line]
    answered = [line for line in lines if "  answered  " in line]
    assert len(asked) == 2 and "When do you want to go?" in asked[0] and "Book 4 nights?" in asked[1]
    assert "2026-07-28/tasks" in answered[0] and "2026-07-28/mrtr" in answered[1]
    assert any("  refused  " in line for line in lines)
    as_json = [json.loads(line) for line in ledger(settings, "history", "trip-1", "--json").stdout.splitlines()]
    assert [e["kind"] for e in as_json] == ["created", "started", "asked", "refused", "answered", "asked",
                                            "answered", "completed"]
    missing = ledger(settings, "history", "no-such-task")
    assert missing.returncode == 2 and "no task 'no-such-task'" in missing.stderr and "Traceback" not in missing.stderr


async def test_replay_builds_a_store_the_other_commands_read(settings: Settings, trips: list[str],
                                                             tmp_path: Path) -> None:
    path = tmp_path / "projections.sqlite"
    built = ledger(settings, "replay", "--store", str(path))
    assert built.returncode == 0, built.stderr
    assert "replayed 11 events" in built.stdout and "events/s" in built.stdout
    store = ProjectionStore(path)
    assert {row.task_id: row.status for row in store.rows()} == {"trip-1": "completed", "trip-2": "input_required"}
    store.close()
    listed = ledger(settings, "tasks", "--store", str(path), "--status", "input_required")
    assert listed.returncode == 0 and "trip-2" in listed.stdout and "trip-1" not in listed.stdout
    partial = ledger(settings, "replay", "--store", str(path), "--to-offset", "2")
    assert partial.returncode == 0 and "checkpoint:" in partial.stdout
    bad = ledger(settings, "replay", "--store", str(path), "--from", "yesterday")
    assert bad.returncode == 2 and "--from must be ISO 8601" in bad.stderr
    absent = ledger(settings, "tasks", "--store", str(tmp_path / "absent.sqlite"))
    assert absent.returncode == 2 and "ledger replay --store" in absent.stderr


async def test_replay_in_several_processes_builds_the_store_one_process_builds(settings: Settings, topics: dict,
                                                                              tmp_path: Path) -> None:
    async with EventLog(settings) as log:
        await log.append_many([event for i in range(24) for event in plan_trip(f"trip-{i}")[: 3 + i % 6]])
    alone, shared = tmp_path / "alone.sqlite", tmp_path / "shared.sqlite"
    for path, processes in ((alone, "1"), (shared, "3")):
        built = ledger(settings, "replay", "--store", str(path), "--processes", processes)
        assert built.returncode == 0, built.stderr
    db = sqlite3.connect(alone)
    db.execute("ATTACH DATABASE ? AS shared", (str(shared),))
    for table in ("tasks", "history", "checkpoint"):
        assert db.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0] > 0
        for one, other in (("main", "shared"), ("shared", "main")):
            assert db.execute(f"SELECT * FROM {one}.{table} EXCEPT SELECT * FROM {other}.{table}").fetchall() == []
    indexes = "SELECT name FROM {}.sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
    assert db.execute(indexes.format("main")).fetchall() == db.execute(indexes.format("shared")).fetchall() != []
    db.close()
    refused = ledger(settings, "replay", "--store", str(shared), "--processes", "0")
    assert refused.returncode == 2 and "--processes must be at least 1" in refused.stderr


async def test_replay_into_a_database_equals_the_store_file_and_takes_its_place(
        settings: Settings, topics: dict, tmp_path: Path, database_url: str) -> None:
    async with EventLog(settings) as log:
        await log.append_many([event for i in range(24) for event in plan_trip(f"trip-{i}")[: 3 + i % 6]])
    path = tmp_path / "alone.sqlite"
    assert ledger(settings, "replay", "--store", str(path), "--processes", "1").returncode == 0
    reader = PostgresStore(database_url)  # a reader connected before the replay, as a server would be
    for processes in ("3", "1"):  # a second replay replaces the first one's tables
        built = ledger(settings, "replay", "--database", database_url, "--processes", processes)
        assert built.returncode == 0, built.stderr
        assert "replayed 132 events" in built.stdout and "postgresql://postgres@127.0.0.1:" in built.stdout
        file = ProjectionStore(path)
        assert sorted(reader.rows()) == sorted(file.rows()) != []
        assert reader.checkpoint() == file.checkpoint() and reader.history_size() == file.history_size()
        for task_id in ("trip-0", "trip-5", "trip-23"):
            assert reader.history(task_id) == file.history(task_id)
        assert reader.meta("topic") == settings.events_topic
        file.close()
    reader.close()
    unset = ledger(settings, "replay", "--database")
    assert unset.returncode == 2 and unset.stderr == "ledger: --database needs a URL, or LEDGER_DATABASE_URL set\n"
    unreachable = ledger(settings, "replay", "--database", "postgresql://alice:s3cret@127.0.0.1:1/ledger")
    assert unreachable.returncode == 2 and unreachable.stderr.count("\n") == 1, unreachable.stderr
    assert "cannot connect to the projection database postgresql://alice@127.0.0.1:1/ledger" in unreachable.stderr
    assert "s3cret" not in unreachable.stderr


async def test_ctrl_c_stops_a_parallel_replay_in_one_line_and_leaves_no_store(settings: Settings, topics: dict,
                                                                              tmp_path: Path) -> None:
    async with EventLog(settings) as log:
        for first in range(0, 15_000, 1_000):
            await log.append_many([event for i in range(first, first + 1_000) for event in plan_trip(f"trip-{i}")])
    path = tmp_path / "store.sqlite"
    replaying = subprocess.Popen(LEDGER + ["replay", "--store", str(path), "--processes", "2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=role_environment(settings), start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        await until(path.with_name("store.sqlite.building").exists, 60)
    finally:
        os.killpg(replaying.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = replaying.communicate(timeout=60)
    assert (replaying.returncode, err.strip()) == (130, "ledger: interrupted")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ProcessLookupError):  # no replay process left behind
        os.killpg(replaying.pid, 0)


async def test_topics_tells_waiting_for_people_from_not_started(settings: Settings, trips: list[str]) -> None:
    async with EventLog(settings) as log:
        [created] = await log.append_many([sample(TaskCreated, "fresh")])
    described = ledger(settings, "topics")
    assert described.returncode == 0, described.stderr
    lines = described.stdout.splitlines()
    assert lines[0].startswith(f"{settings.events_topic}: {settings.partitions} partitions, 12 events")
    header = lines[1].split("  ")
    assert [h for h in header if h][-3:] == ["waiting for people", "running", "not started"]
    rows = {line.split()[0]: line.split()[-3:] for line in lines[3:] if line[:1].isdigit()}
    assert len(rows) < settings.partitions and "empty, not shown" in lines[0]  # empty partitions are left out
    assert sum(int(r[0]) for r in rows.values()) == 1  # trip-2 waits for its answer
    assert rows[str(created.partition)][2] == "1"  # "fresh" was never started
    everything = ledger(settings, "topics", "--all").stdout
    assert sum(line[:1].isdigit() for line in everything.splitlines()) == settings.partitions + 1  # + dead letters


async def test_tail_from_the_beginning_prints_the_log_in_time_order(settings: Settings, topics: dict) -> None:
    tasks = [f"t-{i}" for i in range(6)]
    async with EventLog(settings) as log:  # in time order, as tasks run side by side: they interleave
        positions = await log.append_many([
            sample(kind, task, occurred_at=1_700_000_000_000 + 10 * step + i)
            for step, kind in enumerate((TaskCreated, TaskStarted, TaskCompleted)) for i, task in enumerate(tasks)])
    assert len({position.partition for position in positions}) > 1
    tail = subprocess.Popen(LEDGER + ["tail", "--from-beginning", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=role_environment(settings))
    try:
        entries = [json.loads(tail.stdout.readline()) for _ in range(18)]
    finally:
        tail.kill()
        tail.wait(10)
    occurred = [e["occurredAt"] for e in entries]
    assert occurred == sorted(occurred) and [e["kind"] for e in entries[:6]] == ["created"] * 6
    assert tail.stderr.read() == ""  # a read command prints what it read, not the client's log lines


async def test_a_reader_that_stops_reading_ends_tail_quietly(settings: Settings, trips: list[str]) -> None:
    """``ledger tail | head``: once the reader is gone, the next line ends the command, with no traceback."""
    tail = subprocess.Popen(LEDGER + ["tail", "--from-beginning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=role_environment(settings))
    try:
        assert tail.stdout.readline()
        tail.stdout.close()
        async with EventLog(settings) as log:
            await log.append_many([sample(TaskStarted, trips[0], attempt=9) for _ in range(50)])
        assert tail.wait(60) == 0
        assert "Traceback" not in tail.stderr.read()
    finally:
        tail.kill()
        tail.wait(10)


async def test_the_read_commands_read_partitions_of_thousands_of_one_event_batches(settings: Settings, topics: dict,
                                                                                   broker_kind: str,
                                                                                   tmp_path: Path) -> None:
    # Each event is usually a batch of its own. At the default fetch wait (2 ms) the embedded broker
    # returns nothing from a partition of thousands of them: `ledger replay` read 86 of 24,000 events
    # in a minute and `ledger tasks` never finished, until their reader paced its fetches as the
    # server's does. On Kafka each acknowledged append is a replication round trip: fewer say the same.
    written = 24_000 if broker_kind == "embedded" else 2_000
    async with EventLog(settings) as log:
        for i in range(written):
            await log.append(sample(TaskCreated, f"chatty-{i}"))  # one at a time: a batch each
    listed = ledger(settings, "tasks", "--json")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == written, listed.stderr[-500:]
    history = ledger(settings, "history", f"chatty-{written - 1}")
    assert history.returncode == 0 and "created" in history.stdout, history.stderr[-500:]
    replayed = ledger(settings, "replay", "--store", str(tmp_path / "store.db"))
    assert replayed.returncode == 0 and f"{written:,} tasks" in replayed.stdout, replayed.stdout + replayed.stderr
