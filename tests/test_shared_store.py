"""A server on the shared projection store: it starts where the database stands and folds on from there,
and what it holds equals a replay of the log from offset 0, row by row and entry by entry. The
tasks-extension and read-side tests run here again on a server of the shared store, with a
projector keeping its database current: one contract, both ways of keeping the projections."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest

from examples.demo import app as demo
from ledger.contract.events import PartitionClaimed
from ledger.engine.worker import Worker
from ledger.kafka.appender import EventLog
from ledger.kafka.reader import LogReader
from ledger.kafka.records import LogRecord, Position
from ledger.kafka.topics import ensure_topics
from ledger.service.replay import replay
from ledger.service.shared_view import SharedView
from ledger.settings import Settings
from projections.postgres import ForeignDatabase, PostgresStore
from projections.projector import Projector
from projections.status import TaskRow
from projections.store import ProjectionStore
from tests import test_modern, test_readside
from tests.support.factories import plan_trip
from tests.support.postgres import new_database
from tests.support.raw_http import ModernClient
from tests.support.spawn import LEDGER, role_environment
from tests.support.stack import answer_through_tasks, in_status, running, serving, until, working
from tests.test_projectors import assert_same, member


@pytest.fixture(scope="module")
def stack_settings(postgres_cluster: str) -> dict[str, Any]:
    return {**test_modern.stack_settings.__wrapped__(), "database_url": new_database(postgres_cluster)}


@pytest.fixture(scope="module", autouse=True)
async def projecting(stack: tuple[str, Settings]) -> AsyncIterator[None]:
    """A projector for the module's stack, keeping its database current."""
    _, settings = stack
    async with member(settings, settings.database_url, "projector"):
        yield


# The contract: every test of these modules that runs on the module's stack. Not test_server's: its
# trips to Lisbon would be taken for test_modern's, which finds its own by destination on the log.
for _module in (test_modern, test_readside):
    globals().update({name: test for name, test in vars(_module).items()
                      if name.startswith("test_") and "stack" in inspect.signature(test).parameters})


def begun(first: int, last: int) -> list:
    """Trips ``first`` to ``last - 1``, each stopped at another step."""
    return [event for i in range(first, last) for event in plan_trip(f"trip-{i}")[: 1 + i % 7]]


def finished(first: int, last: int) -> list:
    """The rest of the events of ``begun``'s trips: answers, questions and ends of tasks created before."""
    return [event for i in range(first, last) for event in plan_trip(f"trip-{i}")[1 + i % 7:]]


async def until_applied(view: SharedView, end: dict[int, int]) -> None:
    """Until ``view`` has applied every record before ``end``."""
    for partition, offset in end.items():
        if offset:
            await view.reached(Position(partition, offset - 1), 60)


async def fold_from_zero(settings: Settings) -> dict[tuple[int, int], TaskRow | None]:
    """Each record's task's row just after it, folding the log from offset 0 in memory."""
    projector, rows = Projector(), {}
    async with LogReader(settings) as reader:
        while not reader.caught_up() or not rows:
            for record in await reader.fetch(timeout_ms=200):
                rows[record.partition, record.offset] = projector.apply(record)[1]
    return rows


@pytest.mark.parametrize("projectors", ["behind the view", "ahead of the view"])
async def test_a_view_restored_from_the_database_and_following_the_log_equals_a_replay_from_zero(
        settings: Settings, topics: dict, database_url: str, projectors: str) -> None:
    settings = replace(settings, cached_rows=4)  # most rows leave memory once the database has them
    database = PostgresStore(database_url)
    async with EventLog(settings) as log:
        await log.append_many(begun(0, 40))
        await replay(settings, database, to_offset=12)  # the database, partway through
        await log.append_many(finished(0, 20) + begun(40, 60))  # behind the database's checkpoint
        restored = PostgresStore(database_url)
        if projectors == "ahead of the view":
            # The projectors fold everything between the view's reading the checkpoint and its first
            # fetch: every row the view then needs is further on in the database than the view is.
            then = restored.snapshot()
            async with member(settings, database_url, "projector"):
                await until(lambda: sum(database.checkpoint().values()) == len(begun(0, 60) + finished(0, 20)), 60)
            restored.snapshot = lambda: then
        view = SharedView(settings, restored)
        folded: dict[tuple[int, int], TaskRow | None] = {}
        keep = view._applied_record

        def applied(record: LogRecord, before: TaskRow | None, after: TaskRow | None) -> None:
            folded[record.partition, record.offset] = after
            keep(record, before, after)

        view._applied_record = applied
        await view.start()
        try:
            async with member(settings, database_url, "projector"):
                await log.append_many(finished(20, 60))
                replayed = ProjectionStore()
                await replay(settings, replayed)
                end = replayed.checkpoint()
                await until_applied(view, end)
                await until(lambda: database.checkpoint() == end, 60)
                await asyncio.sleep(0.6)  # the view learns the database's checkpoint and lets rows go
                view._after_applying()
            truth = await fold_from_zero(settings)
            assert folded and all(after == truth[position] for position, after in folded.items())
            held = dict(view.projection.rows)
            assert 0 < len(held) <= 4
            for task_id, row in held.items():
                assert row == replayed.row(task_id), task_id
            for row in replayed.rows():  # every task, through the view: held, or read from the database
                assert await view.load(row.task_id) == row, row.task_id
            assert_same(database, replayed)
            page = await view.page(None, None, 100)
            assert [r.task_id for r in page] == [r.task_id for r in replayed.tasks(limit=100)]
        finally:
            await view.stop()


async def test_a_worker_restores_a_task_left_open_across_a_long_history_from_the_database(
        bootstrap: str, postgres_cluster: str) -> None:
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:12]}", partitions=4,
                                 session_timeout_ms=6_000, database_url=new_database(postgres_cluster))
    await ensure_topics(settings)
    database = PostgresStore(settings.database_url)
    async with member(settings, settings.database_url, "projector"), serving(demo, settings) as url, \
            ModernClient(url) as client:
        async with working(demo, settings, "first"):
            waiting = (await client.result("tools/call", {"name": "approve_expense", "arguments": {
                "amount": 7, "description": "train"}}))["taskId"]
            await in_status(client, waiting, "input_required")
        async with EventLog(settings) as log:  # the history grows while the task waits: 2,400 events
            await log.append_many([event for i in range(300) for event in plan_trip(f"trip-{i}")])
        replayed = ProjectionStore()
        await replay(settings, replayed)
        await until(lambda: database.checkpoint() == replayed.checkpoint(), 60)
        worker = Worker(demo, settings, worker_id="second")
        read: list[LogRecord] = []
        handle = worker._handle

        async def counted(records: list[LogRecord]) -> None:
            read.extend(records)
            await handle(records)

        worker._handle = counted
        async with running(worker):
            partition = next(p for p, journals in worker._journals.items() if waiting in journals)
            assert worker._journals[partition][waiting].waiting
            await answer_through_tasks(client, waiting, {"approved": True})
            await in_status(client, waiting, "completed")
    # What it read of the log: its claims, and the answer and what followed it; none of the history before.
    assert read and all(isinstance(r.event, PartitionClaimed) or r.event.task_id == waiting for r in read), \
        [type(r.event).__name__ for r in read]
    database.close()


async def test_a_view_rides_out_its_database_connection_dropping(settings: Settings, topics: dict,
                                                                database_url: str) -> None:
    async with EventLog(settings) as log:
        await log.append_many(begun(0, 20))
        await replay(settings, PostgresStore(database_url))
        view = SharedView(settings, PostgresStore(database_url))
        await view.start()
        try:
            with psycopg.connect(database_url, autocommit=True) as admin:  # what a database restart does
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            await log.append_many(finished(0, 20))  # rows the view makes from the database's history
            replayed = ProjectionStore()
            await replay(settings, replayed)
            end = replayed.checkpoint()
            await until_applied(view, end)
            for row in replayed.rows():
                assert view.get(row.task_id) == row, row.task_id
        finally:
            await view.stop()


async def test_a_view_refuses_a_database_folded_from_another_topic(settings: Settings, topics: dict,
                                                                  database_url: str) -> None:
    async with EventLog(settings) as log:
        await log.append_many(begun(0, 4))
    await replay(settings, PostgresStore(database_url))
    other = replace(settings, topic_prefix=f"{settings.topic_prefix}-other")
    await ensure_topics(other)
    async with EventLog(other) as log:
        await log.append_many(begun(10, 14))
    with pytest.raises(ForeignDatabase, match=f"holds the fold of another {other.events_topic}; rebuild it with"):
        await SharedView(other, PostgresStore(database_url)).start()
    for role in ("server", "worker"):  # the roles say so in one sentence, before they serve or work
        refused = subprocess.run(LEDGER + [role, "examples/demo.py"], capture_output=True, text=True, timeout=60,
                                 env={**role_environment(other), "LEDGER_DATABASE_URL": database_url})
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.splitlines()[-1].startswith("ledger: the projection database postgresql://"), \
            refused.stderr
        assert f"holds the fold of another {other.events_topic}" in refused.stderr
