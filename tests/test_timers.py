"""Time on the log. Questions with a deadline (``ctx.elicit(..., timeout=)``): the deadline passes while
no worker runs at all; the tool goes on with ``timed_out``; an answer after it is not taken on either
wire, and recorded; a client waiting on a relayed question is asked the next one instead. Sleeps
(``ctx.sleep``): a task sleeps holding nothing, through a worker's SIGKILL, and wakes at its time."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import replace
from typing import Any

import mcp_types as types

from examples.demo import app as demo
from ledger.contract.elicitation import ANSWER_BY
from ledger.contract.events import ElicitationExpired, ElicitationRequested, TimerFired, TimerSet, iso
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from projections.status import TIMED_OUT
from tests.support.engine import all_events
from tests.support.mcp_client import RESPONSE, call_as_task, connect, task_result
from tests.support.raw_http import ModernClient, RawSession
from tests.support.spawn import worker_process
from tests.support.stack import in_status, serving, until, working
from tests.test_answer_races import projected

DEADLINE_S = 3.0
APPROVE = {"action": "accept", "content": {"approved": True}}


async def asked_again(client: ModernClient, task_id: str, besides: str) -> tuple[str, dict[str, Any]]:
    """The task's next question once it asks one other than ``besides``: its key and request."""
    async def next_question() -> tuple[str, dict[str, Any]] | None:
        task = await client.result("tasks/get", {"taskId": task_id})
        requests = task.get("inputRequests") or {}
        return next(((key, request) for key, request in requests.items() if key != besides), None)

    return await until(next_question, 60)


async def test_a_deadline_passes_while_the_worker_is_killed_and_the_tool_escalates(settings: Settings,
                                                                                   figures) -> None:
    settings = replace(settings, session_timeout_ms=3_000)
    await ensure_topics(settings)
    worker = await asyncio.to_thread(worker_process, settings)
    try:
        async with serving(demo, settings) as url, ModernClient(url) as modern, RawSession(url) as legacy:
            created = await modern.result("tools/call", {"name": "approve_or_escalate", "arguments": {
                "amount": 5, "description": "late", "answer_within_minutes": DEADLINE_S / 60}})
            task_id = created["taskId"]
            waiting = await in_status(modern, task_id, "input_required")
            first, request = next(iter(waiting["inputRequests"].items()))
            assert ANSWER_BY in request["params"]["_meta"], request
            assert f"(answer by {request['params']['_meta'][ANSWER_BY]}" in waiting["statusMessage"], waiting

            worker.send_signal(signal.SIGKILL)  # no worker runs when the deadline passes
            worker.wait()
            await asyncio.sleep(DEADLINE_S + 1)
            worker = await asyncio.to_thread(worker_process, settings)
            second, escalation = await asked_again(modern, task_id, besides=first)
            assert escalation["params"]["message"].startswith("Escalated to you"), escalation
            assert ANSWER_BY not in escalation["params"].get("_meta", {}), "the escalation waits for ever"

            # Too late on both wires: ignored on 2026-07-28, refused on 2025-11-25; recorded either way.
            await modern.result("tasks/update", {"taskId": task_id, "inputResponses": {first: APPROVE}})
            refused = await legacy.call("tasks/get", {"taskId": task_id, "_meta": {
                RESPONSE: {"elicitationId": first, **APPROVE}}})
            assert "timed out" in refused["error"]["message"], refused
            await modern.result("tasks/update", {"taskId": task_id, "inputResponses": {second: APPROVE}})
            done = await in_status(modern, task_id, "completed")
            assert done["result"]["content"][0]["text"] == "approved 5", done
    finally:
        worker.kill()
        worker.wait()

    events = await all_events(settings)
    asked = next(e for e in events if isinstance(e, ElicitationRequested) and e.elicitation_id == first)
    timed_out = [e for e in events if isinstance(e, ElicitationExpired)]
    assert [e.elicitation_id for e in timed_out] == [first], "one timeout, of the first question, once"
    assert timed_out[0].occurred_at >= asked.occurred_at + DEADLINE_S * 1000, "never before its deadline"
    store = await projected(settings)
    kinds = [(entry.kind, entry.summary) for entry in store.history(task_id)]
    assert (TIMED_OUT, "no answer within 3 s: the task goes on without one") in kinds, kinds
    refusals = [summary for kind, summary in kinds if kind == "refused"]
    assert any("ignored: 1 answer(s) to elicitations not outstanding" in s for s in refusals), kinds
    assert any("timed out: elicitation" in s for s in refusals), kinds
    figures(f"deadline {DEADLINE_S:g} s with no worker running: timed out "
            f"{(timed_out[0].occurred_at - asked.deadline) / 1000:.2f} s after it, by the worker started after it")


async def test_a_question_waiting_in_place_times_out_at_its_deadline_and_a_relayed_client_is_asked_the_next(
        settings: Settings, figures) -> None:
    await ensure_topics(settings)
    relayed: list[str] = []
    first_relayed = asyncio.Event()

    async def person(params: types.ElicitRequestFormParams) -> types.ElicitResult:
        relayed.append(params.message)
        if len(relayed) == 1:  # away from the keyboard while the first question waits
            first_relayed.set()
            await asyncio.Event().wait()
        return types.ElicitResult(action="accept", content={"approved": False, "note": "too late for lunch"})

    # The hot window outlasts the deadline: the tool waits in place, and the timeout resumes it there.
    async with working(demo, replace(settings, hot_window_ms=60_000)), serving(demo, settings) as url, \
            connect(url, person) as client:
        created = await call_as_task(client, "approve_or_escalate", {
            "amount": 12, "description": "lunch", "answer_within_minutes": 1 / 60})
        task_id = created["task"]["taskId"]
        result = await asyncio.wait_for(task_result(client, task_id), 60)

    assert first_relayed.is_set() and len(relayed) == 2 and relayed[1].startswith("Escalated to you"), relayed
    assert result["content"][0]["text"] == "rejected 12", result
    events = await all_events(settings)
    asked = next(e for e in events if isinstance(e, ElicitationRequested))
    timed_out = next(e for e in events if isinstance(e, ElicitationExpired))
    assert timed_out.occurred_at >= asked.deadline, (iso(timed_out.occurred_at), iso(asked.deadline))
    figures(f"a 1 s deadline on a question waiting in place: timed out {timed_out.occurred_at - asked.deadline} ms "
            f"after it; the relayed client was then asked the escalation")


SLEEP_S = 8.0  # outlasts a worker's SIGKILL, its session timeout and a new worker's start


async def test_a_sleep_survives_its_worker_killed_and_wakes_at_its_time(settings: Settings, figures) -> None:
    settings = replace(settings, session_timeout_ms=3_000)
    await ensure_topics(settings)
    worker = await asyncio.to_thread(worker_process, settings)
    try:
        async with serving(demo, settings) as url, ModernClient(url) as modern:
            created = await modern.result("tools/call", {"name": "remind", "arguments": {
                "about": "the invoice", "after_minutes": SLEEP_S / 60}})
            task_id = created["taskId"]

            async def sleeping() -> dict[str, Any] | None:
                task = await modern.result("tasks/get", {"taskId": task_id})
                return task if (task.get("statusMessage") or "").startswith("Sleeping until ") else None

            asleep = await until(sleeping, 30)
            assert asleep["status"] == "working", asleep
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            worker = await asyncio.to_thread(worker_process, settings)
            waiting = await in_status(modern, task_id, "input_required", timeout=60)
            key, request = next(iter(waiting["inputRequests"].items()))
            assert request["params"]["message"].startswith("Reminder, "), request
            await modern.result("tasks/update", {"taskId": task_id, "inputResponses": {
                key: {"action": "accept", "content": {"confirm": True}}}})
            done = await in_status(modern, task_id, "completed")
            assert done["result"]["content"][0]["text"].startswith("the invoice: done ("), done
    finally:
        worker.kill()
        worker.wait()

    events = await all_events(settings)
    timer = next(e for e in events if isinstance(e, TimerSet))
    fired = [e for e in events if isinstance(e, TimerFired)]
    assert len(fired) == 1 and fired[0].occurred_at >= timer.due, (iso(timer.due), [iso(e.occurred_at) for e in fired])
    late_ms = fired[0].occurred_at - timer.due
    assert late_ms < 1_000, f"woke {late_ms} ms after its time, by a worker started while it slept"
    figures(f"a {SLEEP_S:g} s sleep across a worker's SIGKILL and restart: woke {late_ms} ms after its time")
