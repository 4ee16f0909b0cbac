"""Conflicting answers to one question, sent at once through three servers on one log and over both
wires: the log decides. The first answer on the log is the answer, on every server and in the tool;
every other one is shown ignored in the history, and a 2025-11-25 sender of one is told it was not
taken (a 2026-07-28 ``tasks/update`` stays an acknowledgement, as that spec has it)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

from examples.demo import app as demo
from ledger.kafka.reader import LogReader
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from projections.projector import Projector, flush
from projections.store import ProjectionStore
from tests.support.mcp_client import RESPONSE
from tests.support.raw_http import ModernClient, RawSession
from tests.support.stack import in_status, serving, working

SERVERS = 3
TASKS = 8
SENDERS = 4  # answers to each question, each through a server and a wire drawn at random


async def test_conflicting_answers_through_three_servers_have_one_winner(bootstrap: str, figures) -> None:
    seed = int(os.environ.get("LEDGER_RACE_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"races-{uuid.uuid4().hex[:12]}", partitions=4)
    await ensure_topics(settings)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(working(demo, settings))
        urls = [await stack.enter_async_context(serving(demo, settings, f"s{i}")) for i in range(SERVERS)]
        modern = [await stack.enter_async_context(ModernClient(url)) for url in urls]
        legacy = [await stack.enter_async_context(RawSession(url)) for url in urls]
        questions = {}
        for amount in range(TASKS):
            created = await modern[0].result("tools/call", {"name": "approve_expense", "arguments": {
                "amount": amount, "description": "contested"}})
            asked = await in_status(modern[0], created["taskId"], "input_required")
            questions[created["taskId"]] = next(iter(asked["inputRequests"]))

        async def send(task_id: str, sender: int) -> tuple[str, int, str, dict[str, Any]]:
            server, wire = rng.randrange(SERVERS), rng.choice(("2025-11-25", "2026-07-28"))
            answer = {"action": "accept", "content": {"approved": sender % 2 == 0, "note": f"sender {sender}"}}
            if wire == "2025-11-25":
                reply = await legacy[server].call("tasks/get", {"taskId": task_id, "_meta": {
                    RESPONSE: {"elicitationId": questions[task_id], **answer}}})
            else:
                reply = await modern[server].call("tasks/update", {"taskId": task_id, "inputResponses": {
                    questions[task_id]: answer}})
            return task_id, sender, wire, reply

        replies = await asyncio.gather(*(send(task_id, sender) for task_id in questions for sender in range(SENDERS)))
        results = {task_id: await in_status(modern[0], task_id, "completed") for task_id in questions}

    store = await projected(settings)
    wires = Counter(wire for _, _, wire, _ in replies)
    for task_id in questions:
        entries = store.history(task_id)
        answered = [e for e in entries if e.kind == "answered"]
        # A loser is ignored on the log (it reached it second), or refused by a server that had already
        # read the winner (recorded as refused, or, from tasks/update, as ignored: not outstanding).
        others = [e for e in entries if e.kind in ("ignored", "refused")]
        assert len(answered) == 1, [(e.kind, e.summary) for e in entries]
        assert len(others) == SENDERS - 1, [(e.kind, e.summary) for e in entries]
        winner = int(json.loads(json.loads(answered[0].detail_json)["content_json"])["note"].split()[1])
        verdict = "approved" if winner % 2 == 0 else "rejected"
        assert results[task_id]["result"]["content"][0]["text"].startswith(verdict), results[task_id]
        for replied_task, sender, wire, reply in replies:
            if replied_task != task_id or wire != "2025-11-25":
                continue
            if sender == winner:
                assert "result" in reply, reply
            else:
                assert "error" in reply, reply
    figures(f"{TASKS} questions, {SENDERS} conflicting answers to each sent at once through {SERVERS} servers "
            f"({wires['2025-11-25']} on 2025-11-25, {wires['2026-07-28']} on 2026-07-28; seed {seed}): one answer "
            f"per question taken, the others recorded as not taken, every 2025-11-25 loser told")


async def projected(settings: Settings) -> ProjectionStore:
    """The log folded into a fresh store, as ``ledger replay`` would."""
    projector, store = Projector(), ProjectionStore()
    async with LogReader(settings) as reader:
        async for batch in reader.catch_up():
            for record in batch:
                projector.apply(record)
    flush(store, projector.take(), {})
    return store
