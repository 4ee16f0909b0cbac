"""The projectors keep the shared projection store equal to a replay of the log, through rebalances."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ledger.kafka.appender import EventLog
from ledger.service.projectors import ProjectorMember
from ledger.service.replay import replay
from ledger.settings import Settings
from projections.postgres import PostgresStore
from projections.store import ProjectionStore, Store
from tests.support.factories import plan_trip
from tests.support.spawn import LEDGER, role_environment, wait_for_line
from tests.support.stack import until


def trips(first: int, last: int) -> list:
    """The events of trips ``first`` to ``last - 1``, each stopping at another step."""
    return [event for i in range(first, last) for event in plan_trip(f"trip-{i}")[: 3 + i % 6]]


@asynccontextmanager
async def member(settings: Settings, url: str, name: str) -> AsyncIterator[ProjectorMember]:
    store = PostgresStore(url)
    projector = ProjectorMember(settings, store, member_id=name)
    ready = asyncio.Event()
    running = asyncio.create_task(projector.run(ready))
    await until(lambda: ready.is_set() or running.done(), 30)
    try:
        yield projector
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        store.close()


def assert_same(database: Store, replayed: Store) -> None:
    assert database.checkpoint() == replayed.checkpoint()
    assert sorted(database.rows()) == sorted(replayed.rows()) != []
    assert database.owners() == replayed.owners()
    for row in replayed.rows():
        assert database.history(row.task_id) == replayed.history(row.task_id), row.task_id


async def test_projectors_keep_the_database_equal_to_a_replay_through_a_member_joining_and_leaving(
        settings: Settings, topics: dict, database_url: str) -> None:
    database = PostgresStore(database_url)
    async with EventLog(settings) as log:
        await log.append_many(trips(0, 30))  # history before any projector: the first folds it from offset 0
        async with member(settings, database_url, "first") as first:
            await until(lambda: sum(database.checkpoint().values()) == len(trips(0, 30)), 60,
                        lambda: f"the database reached {database.checkpoint()}")
            async with member(settings, database_url, "second") as second:
                await log.append_many(trips(30, 60))
                await until(lambda: first.checkpoint() and second.checkpoint(), 60,
                            lambda: f"the group did not share the partitions: {first.checkpoint()}, "
                                    f"{second.checkpoint()}")
                await log.append_many(trips(60, 90))
            await log.append_many(trips(90, 120))  # the first member alone again, taking the second's over
            replayed = ProjectionStore()
            await replay(settings, replayed)
            await until(lambda: database.checkpoint() == replayed.checkpoint(), 60,
                        lambda: f"the database reached {database.checkpoint()}, the log {replayed.checkpoint()}")
    assert_same(database, replayed)
    assert database.count() == 120
    database.close()


async def test_the_projector_command_folds_the_log_into_the_database_until_stopped(
        settings: Settings, topics: dict, database_url: str) -> None:
    async with EventLog(settings) as log:
        await log.append_many(trips(0, 20))
    environment = {**role_environment(settings), "LEDGER_DATABASE_URL": database_url}
    process = subprocess.Popen(LEDGER + ["projector"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=environment)
    database = PostgresStore(database_url)
    try:
        banner = "".join(wait_for_line(process, "ledger projector: folding", timeout=60))
        assert "into postgresql://postgres@127.0.0.1:" in banner and settings.events_topic in banner
        replayed = ProjectionStore()
        await replay(settings, replayed)
        await until(lambda: database.checkpoint() == replayed.checkpoint(), 60,
                    lambda: f"the database reached {database.checkpoint()}, the log {replayed.checkpoint()}")
        assert_same(database, replayed)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        database.close()
    assert process.returncode == 0 and "Traceback" not in output, output
    without = subprocess.run(LEDGER + ["projector"], capture_output=True, text=True, timeout=60,
                             env=role_environment(settings))
    assert without.returncode == 2 and without.stderr == (
        "ledger: ledger projector needs a database: --database URL, or LEDGER_DATABASE_URL set\n")
