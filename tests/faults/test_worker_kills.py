"""Workers SIGKILLed every 2 s and restarted while 1,000 approvals are answered: every task completes
exactly once, and no journaled step runs twice. Prints its figures."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import replace

import pytest

from ledger.contract.events import StepRecorded, TaskCompleted, TaskStarted
from ledger.kafka.broker import free_port
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.engine import all_events
from tests.support.flows import FlowStats, approve_many
from tests.support.spawn import spawned, worker_process

pytestmark = pytest.mark.slow

TASKS = 1_000
WORKERS = 3
KILL_EVERY_S = 2.0
DEMO = "examples/demo.py"


async def test_a_thousand_approvals_survive_workers_killed_every_two_seconds(settings: Settings, figures) -> None:
    settings = replace(settings, session_timeout_ms=3_000, hot_window_ms=2_000)
    await ensure_topics(settings)
    port = free_port()
    workers = [await asyncio.to_thread(worker_process, settings) for _ in range(WORKERS)]
    kills = 0
    stop_killing = asyncio.Event()

    restarting: set[asyncio.Task[None]] = set()

    async def replace_worker(victim: subprocess.Popen[str]) -> None:
        workers.append(await asyncio.to_thread(worker_process, settings))
        workers.remove(victim)

    async def killer() -> None:
        # A kill every 2 s on the clock, whether or not the last replacement has joined yet.
        nonlocal kills
        while not stop_killing.is_set():
            await asyncio.sleep(KILL_EVERY_S)
            alive = [w for w in workers if w.poll() is None]
            if not alive:
                continue
            victim = random.choice(alive)
            victim.send_signal(signal.SIGKILL)
            kills += 1
            restart = asyncio.create_task(replace_worker(victim))
            restarting.add(restart)
            restart.add_done_callback(restarting.discard)
        await asyncio.gather(*restarting)

    started = time.monotonic()
    try:
        with spawned(["server", DEMO, "--port", str(port)], settings, "serving"):
            killing = asyncio.create_task(killer())
            stats = FlowStats()
            task_ids = await asyncio.wait_for(approve_many(f"http://127.0.0.1:{port}/mcp", TASKS, stats), 600)
            stop_killing.set()
            await killing
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(10)
    elapsed = time.monotonic() - started
    events = [e for e in await all_events(settings) if e.task_id in set(task_ids)]
    completed = Counter(e.task_id for e in events if isinstance(e, TaskCompleted))
    starts = Counter(e.task_id for e in events if isinstance(e, TaskStarted))
    steps = Counter((e.task_id, e.sequence) for e in events if isinstance(e, StepRecorded))
    figures(f"{TASKS} approvals, {WORKERS} workers, {kills} SIGKILLs (one every {KILL_EVERY_S:g} s): "
          f"all completed in {elapsed:.1f} s; runs per task: max {max(starts.values())}, "
          f"mean {sum(starts.values()) / len(starts):.2f}; {stats.describe()}")
    assert len(completed) == TASKS and set(completed.values()) == {1}
    assert all(count == 1 for count in steps.values())
    assert kills >= 3
