"""Keyed calls: a ``tools/call`` whose ``_meta`` carries ``"ledger/idempotency-key"`` names one task, however
often, through however many servers and on either wire it is sent; the log decides which created event is
the task's. The same key with other arguments is -32602; another principal's key never names the task."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import replace

from examples.demo import app as demo
from ledger.contract.events import ElicitationRequested, TaskCreated
from ledger.engine.app import InvalidArguments
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.apps.engine_app import app
from tests.support.engine import all_events, running_engine
from tests.support.raw_http import ModernClient, RawSession
from tests.support.stack import in_status, serving, working
from tests.test_answer_races import projected

KEY = "ledger/idempotency-key"
REPEATS = 100
EXPENSE = {"name": "approve_expense", "arguments": {"amount": 70, "description": "retried after a dropped line"}}


async def test_a_keyed_call_sent_a_hundred_times_at_once_through_two_servers_is_one_task(settings: Settings,
                                                                                        figures) -> None:
    await ensure_topics(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(working(demo, settings))
        urls = [await stack.enter_async_context(serving(demo, settings, f"s{i}")) for i in range(2)]
        modern = [await stack.enter_async_context(ModernClient(url)) for url in urls]
        legacy = [await stack.enter_async_context(RawSession(url)) for url in urls]

        async def call(repeat: int) -> tuple[str, str]:
            server, meta = repeat % 2, {"_meta": {KEY: "expense-70"}}
            if repeat % 4 < 2:
                created = await modern[server].result("tools/call", {**EXPENSE, **meta})
                return "2026-07-28", created["taskId"]
            reply = await legacy[server].call("tools/call", {**EXPENSE, **meta, "task": {}})
            return "2025-11-25", reply["result"]["task"]["taskId"]

        calls = await asyncio.gather(*(call(repeat) for repeat in range(REPEATS)))
        task_ids = Counter(task_id for _, task_id in calls)
        assert len(task_ids) == 1, task_ids
        task_id = next(iter(task_ids))

        other = await modern[1].call("tools/call", {"name": "approve_expense", "_meta": {KEY: "expense-70"},
                                                    "arguments": {"amount": 71, "description": "another"}})
        assert other["error"]["code"] == -32602 and "other arguments" in other["error"]["message"], other
        unkeyed = await modern[0].result("tools/call", EXPENSE)
        assert unkeyed["taskId"] != task_id, "a call without a key is a new task"

        key = next(iter((await in_status(modern[0], task_id, "input_required"))["inputRequests"]))
        await modern[1].result("tasks/update", {"taskId": task_id, "inputResponses": {
            key: {"action": "accept", "content": {"approved": True}}}})
        await in_status(modern[0], task_id, "completed")
        again = await modern[1].result("tools/call", {**EXPENSE, "_meta": {KEY: "expense-70"}})
        assert again["taskId"] == task_id, "a repeat after the task ended still names it"

    events = [e for e in await all_events(settings) if e.task_id == task_id]
    created = [e for e in events if isinstance(e, TaskCreated)]
    assert sum(isinstance(e, ElicitationRequested) for e in events) == 1, "the tool ran once"
    entries = (await projected(settings)).history(task_id)
    assert [e.kind for e in entries].count("created") == 1
    repeats = [e for e in entries if e.summary.startswith("not taken: a repeat of the keyed call")]
    assert len(repeats) == len(created) - 1, [(e.kind, e.summary) for e in entries]
    wires = Counter(wire for wire, _ in calls)
    figures(f"{REPEATS} keyed calls at once through 2 servers ({wires['2026-07-28']} on 2026-07-28, "
            f"{wires['2025-11-25']} on 2025-11-25): one task; {len(created)} created events reached the log, "
            f"the first counted, the others kept as repeats")


async def test_a_key_is_its_principals_and_names_a_new_task_once_its_window_passed(settings: Settings,
                                                                                  topics: dict) -> None:
    settings = replace(settings, idempotency_window_ms=2_000)
    async with running_engine(app, settings) as engine:
        def create(principal: str):
            return engine.service.create("broken", {"reason": "r"}, principal=principal, ttl_ms=None,
                                         protocol="test", idempotency_key="same key")

        alice, bob = await create("alice"), await create("bob")
        assert alice.task_id != bob.task_id and (await create("alice")).task_id == alice.task_id
        await asyncio.sleep(2.1)
        renewed = await create("alice")
        assert renewed.task_id not in (alice.task_id, bob.task_id), "the key names a new task after its window"
        assert (await create("alice")).task_id == renewed.task_id
        for bad in ("", "x" * 257, "lone \ud800"):
            try:
                await engine.service.create("broken", {"reason": "r"}, principal="alice", ttl_ms=None,
                                            protocol="test", idempotency_key=bad)
            except InvalidArguments as exc:
                assert "idempotency key" in str(exc), exc
            else:
                raise AssertionError(f"the key {bad!r} was taken")
