"""An engine in the test process: live view, task service and workers on a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ledger.contract.events import TaskEvent
from ledger.engine.app import App
from ledger.engine.worker import Worker
from ledger.kafka.appender import EventLog
from ledger.kafka.reader import LogReader
from ledger.service.live_view import LiveView
from ledger.service.tasks import TaskService
from ledger.settings import Settings
from projections.status import TaskRow
from projections.store import ProjectionStore

WAIT = 30.0


@dataclass
class Engine:
    app: App
    settings: Settings
    service: TaskService
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    members: list[Worker] = field(default_factory=list)  # the workers themselves, to describe a stuck task

    async def start_worker(self, worker_id: str) -> asyncio.Task[None]:
        """A worker in this process, once the group has given it partitions."""
        ready = asyncio.Event()
        member = Worker(self.app, self.settings, worker_id=worker_id)
        worker = asyncio.create_task(member.run(ready))
        self.workers.append(worker)
        self.members.append(member)
        await asyncio.wait_for(ready.wait(), WAIT)
        return worker

    async def settled(self, task_id: str, status: str | None = None) -> TaskRow:
        """The task once it is waiting for input or ended (or has ``status``)."""
        def done(row: TaskRow) -> bool:
            return row.status == status if status else row.status != "working"
        row = await self.service.wait(task_id, None, done, WAIT)
        assert done(row), (f"task {task_id} still {row.status} after {WAIT}s; view: {self.service.view.describe()}; "
                           f"workers: {[member.describe(task_id) for member in self.members]}")
        return row


@asynccontextmanager
async def running_engine(app: App, settings: Settings, workers: int = 1) -> AsyncIterator[Engine]:
    async with EventLog(settings) as log:
        view = LiveView(settings, ProjectionStore())
        await view.start()
        engine = Engine(app, settings, TaskService(app, settings, log, view, "server:test"))
        try:
            for i in range(workers):
                await engine.start_worker(f"w{i}")
            yield engine
        finally:
            for task in engine.workers:
                task.cancel()
            await asyncio.gather(*engine.workers, return_exceptions=True)
            await view.stop()


async def history(settings: Settings, task_id: str) -> list[TaskEvent]:
    """Every event of a task, in log order."""
    return [event for event in await all_events(settings) if event.task_id == task_id]


async def all_events(settings: Settings) -> list[TaskEvent]:
    """Every event on the topic, in log order per partition."""
    async with LogReader(settings) as reader:
        return [r.event async for batch in reader.catch_up() for r in batch]
