"""approve_expense flows through the tasks extension that ride out faults: a request that fails is
counted and made again, and what the client saw (errors, slowest request, longest stretch without a
completed flow) is kept for the figures a fault test prints."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.support.raw_http import ModernClient

POLL_S = 0.2


@dataclass
class FlowStats:
    errors: Counter[str] = field(default_factory=Counter)
    slowest_request_s: float = 0.0
    request_s: list[float] = field(default_factory=list)
    completed_at: list[float] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)

    def longest_stall_s(self) -> float:
        """The longest stretch between two flows completing (the ramp up to the first is not a stall)."""
        moments = sorted(self.completed_at)
        return max((b - a for a, b in zip(moments, moments[1:])), default=0.0)

    def describe(self) -> str:
        errors = ", ".join(f"{count} x {message}" for message, count in self.errors.most_common(3)) or "none"
        return (f"client-visible errors: {sum(self.errors.values())} ({errors}); requests p99 {self.p99_s():.2f} s, "
                f"max {self.slowest_request_s:.1f} s; longest stretch between two completed flows "
                f"{self.longest_stall_s():.1f} s")

    def p99_s(self) -> float:
        ordered = sorted(self.request_s)
        return ordered[int(len(ordered) * 0.99)] if ordered else 0.0


async def call(client: ModernClient, method: str, params: dict[str, Any], stats: FlowStats,
               gate: asyncio.Semaphore) -> dict[str, Any]:
    """The JSON-RPC response to one request (``result`` or ``error``); a transport failure is an error too."""
    async with gate:
        started = time.monotonic()
        try:
            response = await client.call(method, params)
        except Exception as exc:  # the server may stall or drop the connection while brokers fail
            response = {"error": {"code": 0, "message": f"{type(exc).__name__}: {exc}"}}
        took = time.monotonic() - started
        stats.request_s.append(took)
        stats.slowest_request_s = max(stats.slowest_request_s, took)
    if "error" in response:
        stats.errors[f"{method}: {response['error']['message'][:60]}"] += 1
    return response


async def approve(client: ModernClient, amount: int, stats: FlowStats, gate: asyncio.Semaphore) -> str:
    """One approve_expense flow to its end; its task id. A create the log did not confirm names the
    task it may still have created: the flow goes on with it, and creates anew if it never appears."""
    while True:
        created = await call(client, "tools/call", {"name": "approve_expense", "arguments": {
            "amount": amount, "description": f"item {amount}"}}, stats, gate)
        task_id = created["result"]["taskId"] if "result" in created else \
            (created["error"].get("data") or {}).get("taskId")
        if task_id is not None and await follow(client, task_id, amount, stats, gate):
            stats.completed_at.append(time.monotonic())
            return task_id
        await asyncio.sleep(POLL_S)


async def follow(client: ModernClient, task_id: str, amount: int, stats: FlowStats, gate: asyncio.Semaphore,
                 unknown_for_s: float = 60.0) -> bool:
    """Answer the task's question until it completes (True); False if it stays unknown for ``unknown_for_s``."""
    unknown_since = None
    while True:
        got = await call(client, "tasks/get", {"taskId": task_id}, stats, gate)
        task = got.get("result")
        if task is None:
            unknown_since = unknown_since or time.monotonic()
            if "not found" in got["error"]["message"] and time.monotonic() - unknown_since > unknown_for_s:
                return False
        elif task["status"] == "input_required":
            key = next(iter(task["inputRequests"]))
            await call(client, "tasks/update", {"taskId": task_id, "inputResponses": {
                key: {"action": "accept", "content": {"approved": True}}}}, stats, gate)
        elif task["status"] == "completed":
            assert task["result"]["content"][0]["text"] == f"approved {amount}", task
            return True
        else:
            assert task["status"] == "working", task
        await asyncio.sleep(POLL_S)


async def approve_many(url: str, count: int, stats: FlowStats, concurrency: int = 50) -> list[str]:
    """``count`` approve_expense flows at once (``concurrency`` requests in flight at most)."""
    gate = asyncio.Semaphore(concurrency)
    async with ModernClient(url) as client:
        return await asyncio.gather(*(approve(client, i, stats, gate) for i in range(count)))


async def approve_through(url: str, stats: FlowStats, over: asyncio.Event, at_least: int,
                          concurrency: int = 50) -> list[str]:
    """Flows one after another on ``concurrency`` lanes, until ``at_least`` were started and ``over`` is
    set: a load that completes flows steadily all through a fault, however long it lasts."""
    gate = asyncio.Semaphore(concurrency)
    started = 0

    async def lane(client: ModernClient) -> list[str]:
        nonlocal started
        done_here = []
        while started < at_least or not over.is_set():
            started += 1
            done_here.append(await approve(client, started, stats, gate))
        return done_here

    async with ModernClient(url) as client:
        lanes = await asyncio.gather(*(lane(client) for _ in range(concurrency)))
    return [task_id for task_ids in lanes for task_id in task_ids]


async def asked(client: ModernClient, task_id: str) -> dict | None:
    """The task once it waits for an answer (None before)."""
    task = (await client.call("tasks/get", {"taskId": task_id})).get("result")
    return task if task and task["status"] == "input_required" else None


async def asked_or_done(client: ModernClient, task_id: str) -> dict | None:
    task = (await client.call("tasks/get", {"taskId": task_id})).get("result")
    return task if task and task["status"] in ("input_required", "completed") else None


async def done(client: ModernClient, task_id: str) -> bool:
    task = (await client.call("tasks/get", {"taskId": task_id})).get("result")
    return bool(task) and task["status"] == "completed"
