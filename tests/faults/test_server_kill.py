"""A server SIGKILLed while 500 tasks wait: another instance reads and answers all of them, and the
killed server, restarted, resumes from its projection checkpoint instead of offset 0. Prints its figures."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import httpx2 as httpx
import pytest

from ledger.kafka.broker import free_port
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from projections.store import ProjectionStore
from tests.support.raw_http import ModernClient
from tests.support.spawn import spawned
from tests.support.stack import until

pytestmark = pytest.mark.slow

TASKS = 500
DEMO = "examples/demo.py"


async def statuses(client: ModernClient, task_ids: list[str]) -> list[dict]:
    gate = asyncio.Semaphore(50)

    async def get(task_id: str) -> dict:
        async with gate:
            return await client.result("tasks/get", {"taskId": task_id})

    return await asyncio.gather(*(get(t) for t in task_ids))


async def consumed(url: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(url.replace("/mcp", "/metrics"))).text
    return float(re.search(r"^ledger_events_consumed_total (\S+)$", text, re.M).group(1))


async def test_waiting_tasks_outlive_a_killed_server(settings: Settings, tmp_path: Path, figures) -> None:
    await ensure_topics(settings)
    store_a = tmp_path / "server-a.sqlite"
    with_store = replace(settings, store=str(store_a))
    ports = free_port(), free_port()
    a, b = (f"http://127.0.0.1:{p}/mcp" for p in ports)
    with spawned(["worker", DEMO], settings, "ledger worker"), \
            spawned(["server", DEMO, "--port", str(ports[1])], settings, "serving"):
        with spawned(["server", DEMO, "--port", str(ports[0])], with_store, "serving") as doomed:
            async with ModernClient(a) as client:
                gate = asyncio.Semaphore(50)

                async def create(i: int) -> str:
                    async with gate:
                        return (await client.result("tools/call", {"name": "approve_expense", "arguments": {
                            "amount": i, "description": f"item {i}"}}))["taskId"]

                task_ids = await asyncio.gather(*(create(i) for i in range(TASKS)))

                async def all_waiting() -> bool:
                    return all(t["status"] == "input_required" for t in await statuses(client, task_ids))

                await until(all_waiting, 120)
                read = await consumed(a)

                def checkpointed() -> bool:
                    """A's store has a checkpoint to resume from, past every event A had read by now."""
                    with closing(sqlite3.connect(f"file:{store_a}?mode=ro", uri=True)) as db:
                        return (db.execute("SELECT sum(next_offset) FROM checkpoint").fetchone()[0] or 0) >= read

                await until(checkpointed, 30)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
        killed_at = time.monotonic()
        async with ModernClient(b) as other:
            seen = await statuses(other, task_ids)
            readable_s = time.monotonic() - killed_at
            assert all(t["status"] == "input_required" for t in seen)
            gate = asyncio.Semaphore(50)

            async def answer(task: dict) -> None:
                key = next(iter(task["inputRequests"]))
                async with gate:
                    await other.result("tasks/update", {"taskId": task["taskId"], "inputResponses": {
                        key: {"action": "accept", "content": {"approved": True}}}})

            await asyncio.gather(*(answer(t) for t in seen))

            async def all_done() -> bool:
                return all(t["status"] == "completed" for t in await statuses(other, task_ids))

            await until(all_done, 120)
        store = ProjectionStore(store_a)
        checkpoint = sum(store.checkpoint().values())
        store.close()
        assert checkpoint > 0
        restarted_at = time.monotonic()
        with spawned(["server", DEMO, "--port", str(ports[0])], with_store, "serving"):
            ready_s = time.monotonic() - restarted_at
            async with ModernClient(a) as client:
                assert all(t["status"] == "completed" for t in await statuses(client, task_ids))
            read_after_restart = await consumed(a)
    total = checkpoint + read_after_restart
    figures(f"{TASKS} waiting tasks; server A SIGKILLed: all {TASKS} readable on B {readable_s * 1000:.0f} ms later, "
          f"answered and completed there; A restarted and serving in {ready_s:.1f} s, reading "
          f"{read_after_restart:.0f} events from its checkpoint at {checkpoint} instead of {total:.0f} from offset 0")
    assert read_after_restart < total
