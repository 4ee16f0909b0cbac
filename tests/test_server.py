"""MCP 2025-11-25 tasks against a real server over HTTP, with the real ``mcp`` SDK client.

The demo tools through both elicitation patterns (relay and ``_meta``), plain calls, listing,
cancelling and the errors the spec gives for each misuse.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import mcp_types as types
import pytest
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from opentelemetry import trace

from ledger.contract.events import RequestRejected, ResponseSubmitted
from ledger.mcp.server import without_idle_spans
from ledger.settings import Settings
from tests.support.engine import history
from tests.support.mcp_client import (
    PENDING,
    RESPONSE,
    answers,
    call_as_task,
    cancel_task,
    connect,
    first_question,
    get_task,
    list_tasks,
    poll_until,
    task_result,
)
from tests.support.raw_http import RawSession
from tests.support.stack import until

RELATED = "io.modelcontextprotocol/related-task"


def text(result: dict[str, Any]) -> str:
    return result["content"][0]["text"]


async def test_capabilities_and_tools_show_task_support(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        tasks = client.server_capabilities.tasks
        assert tasks.list is not None and tasks.cancel is not None and tasks.requests.tools.call is not None
        listed = {t.name: t for t in (await client.list_tools()).tools}
    demo = {"approve_expense", "approve_or_escalate", "remind", "plan_trip", "count_slowly"}
    assert set(listed) == demo | {"list_tasks", "task_history", "pending_elicitations"}
    assert all(listed[name].execution.task_support == "optional" for name in demo)
    assert listed["task_history"].execution.task_support == "forbidden"
    assert listed["approve_expense"].input_schema["required"] == ["amount", "description"]


@pytest.mark.parametrize(("tool", "arguments", "expected", "questions"), [
    ("approve_expense", {"amount": 42.5, "description": "team lunch"}, "approved 42.5", 1),
    ("plan_trip", {"destination": "Lisbon"}, "booked Lisbon for 2 nights from 2026-12-01", 2),
])
async def test_relay_pattern_answers_through_elicitation_create(
    stack: tuple[str, Settings], tool: str, arguments: dict, expected: str, questions: int
) -> None:
    url, settings = stack
    seen: list[types.ElicitRequestFormParams] = []
    async with connect(url, answers, seen) as client:
        created = await call_as_task(client, tool, arguments, ttl=60_000)
        task_id = created["task"]["taskId"]
        # The task as the server saw it when it answered: the worker may already have asked.
        assert created["task"]["status"] in ("working", "input_required") and created["task"]["ttl"] == 60_000
        result = await task_result(client, task_id)
        task = await get_task(client, task_id)
    assert text(result) == expected and result["isError"] is False
    assert result["_meta"][RELATED] == {"taskId": task_id}
    assert len(seen) == questions
    assert all(params.meta[RELATED] == {"taskId": task_id} for params in seen)
    assert task["status"] == "completed" and PENDING not in task.get("_meta", {})
    responses = [e for e in await history(settings, task_id) if isinstance(e, ResponseSubmitted)]
    assert [e.protocol for e in responses] == ["2025-11-25/relay"] * questions


@pytest.mark.parametrize(("tool", "arguments", "contents", "expected"), [
    ("approve_expense", {"amount": 10, "description": "taxi"}, [{"approved": False}], "rejected 10"),
    ("plan_trip", {"destination": "Oslo"}, [{"start_date": "2027-01-05", "nights": 3}, {"confirm": True}],
     "booked Oslo for 3 nights from 2027-01-05"),
])
async def test_meta_pattern_answers_inside_tasks_get(
    stack: tuple[str, Settings], tool: str, arguments: dict, contents: list[dict], expected: str
) -> None:
    url, settings = stack
    async with connect(url) as client:  # no elicitation support: the _meta pattern only
        task_id = (await call_as_task(client, tool, arguments))["task"]["taskId"]
        for content in contents:
            task = await poll_until(client, task_id, lambda t: t["status"] == "input_required")
            [pending] = task["_meta"][PENDING]
            assert set(pending) == {"elicitationId", "mode", "message", "requestedSchema"}
            answered = await get_task(client, task_id, {RESPONSE: {
                "elicitationId": pending["elicitationId"], "action": "accept", "content": content}})
            assert answered["status"] in ("working", "input_required", "completed")
            assert all(p["elicitationId"] != pending["elicitationId"]
                       for p in answered.get("_meta", {}).get(PENDING, []))
        await poll_until(client, task_id, lambda t: t["status"] == "completed")
        result = await task_result(client, task_id)
    assert text(result) == expected
    responses = [e for e in await history(settings, task_id) if isinstance(e, ResponseSubmitted)]
    assert [e.protocol for e in responses] == ["2025-11-25/meta"] * len(contents)


async def test_created_result_already_lists_a_question_asked_before_it_was_read(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        created = await call_as_task(client, "approve_expense", {"amount": 1, "description": "pen"})
        task = await poll_until(client, created["task"]["taskId"], lambda t: t["status"] == "input_required")
    [pending] = task["_meta"][PENDING]
    assert pending["requestedSchema"] == {
        "type": "object", "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}},
        "required": ["approved"],
    }
    assert pending["message"] == "Approve expense of 1.0 for 'pen'?"


async def test_bad_answers_are_refused_recorded_and_change_nothing(stack: tuple[str, Settings]) -> None:
    url, settings = stack
    async with connect(url) as client:
        task_id = (await call_as_task(client, "approve_expense", {"amount": 7, "description": "book"}))["task"]["taskId"]
        elicitation_id = await first_question(client, task_id)

        async def answer(response: dict) -> dict:
            return await get_task(client, task_id, {RESPONSE: response})

        refusals = [
            ({"elicitationId": elicitation_id, "action": "accept", "content": {"approved": "yes"}}, "requested schema"),
            ({"elicitationId": elicitation_id, "action": "accept", "content": {}}, "'approved' is a required property"),
            ({"elicitationId": "no-such-elicitation", "action": "accept", "content": {"approved": True}}, "no pending"),
            ({"elicitationId": elicitation_id, "action": "maybe"}, "action must be one of"),
        ]
        for response, message in refusals:
            with pytest.raises(MCPError) as refused:
                await answer(response)
            assert refused.value.code == -32602 and message in refused.value.message
            unchanged = await get_task(client, task_id)
            assert unchanged["status"] == "input_required"
            assert unchanged["_meta"][PENDING][0]["elicitationId"] == elicitation_id
        with pytest.raises(MCPError) as malformed:
            await answer({"action": "accept"})
        assert malformed.value.code == -32602

        good = {"elicitationId": elicitation_id, "action": "accept", "content": {"approved": True}}
        await answer(good)
        repeated = await answer(good)  # acknowledged, not applied again
        assert repeated["status"] in ("working", "completed")
        with pytest.raises(MCPError, match="already answered differently"):
            await answer({**good, "content": {"approved": False}})
        await poll_until(client, task_id, lambda t: t["status"] == "completed")
        assert text(await task_result(client, task_id)) == "approved 7"
    events = await history(settings, task_id)
    rejected = [e.reason for e in events if isinstance(e, RequestRejected)]
    assert len(rejected) == 5 + 1  # four refusals + duplicate + conflicting (malformed has no elicitation id)
    assert any(r.startswith("duplicate") for r in rejected)
    assert sum(isinstance(e, ResponseSubmitted) for e in events) == 1


async def test_plain_call_runs_through_the_ledger_and_relays_inline(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url, answers) as client:
        approved = await client.call_tool("approve_expense", {"amount": 3, "description": "coffee"})
        counted = await client.call_tool("count_slowly", {"n": 3})
    assert approved.content[0].text == "approved 3" and not approved.is_error
    assert counted.content[0].text == "counted 3"


async def test_plain_call_from_a_client_that_cannot_be_asked_names_the_waiting_task(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        waiting = await client.call_tool("approve_expense", {"amount": 6, "description": "tea"})
        assert waiting.is_error and "needs input" in waiting.content[0].text
        task_id = waiting.meta[RELATED]["taskId"]
        [pending] = waiting.meta[PENDING]
        await get_task(client, task_id, {RESPONSE: {"elicitationId": pending["elicitationId"], "action": "accept",
                                                    "content": {"approved": True}}})
        await poll_until(client, task_id, lambda t: t["status"] == "completed")
        assert text(await task_result(client, task_id)) == "approved 6"


async def test_client_without_elicitation_waits_and_can_be_answered_through_meta(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as waiting_client, connect(url) as answering_client:
        task_id = (await call_as_task(waiting_client, "approve_expense", {"amount": 9, "description": "cab"}))["task"]["taskId"]
        waiting = asyncio.create_task(task_result(waiting_client, task_id))
        task = await poll_until(answering_client, task_id, lambda t: t["status"] == "input_required")
        assert not waiting.done()
        await get_task(answering_client, task_id, {RESPONSE: {
            "elicitationId": task["_meta"][PENDING][0]["elicitationId"], "action": "decline"}})
        result = await asyncio.wait_for(waiting, 30)
    assert text(result) == "rejected 9"


async def test_cancel_of_running_and_waiting_tasks_and_errors_after(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        running = (await call_as_task(client, "count_slowly", {"n": 100}))["task"]["taskId"]
        waiting = (await call_as_task(client, "approve_expense", {"amount": 5, "description": "gift"}))["task"]["taskId"]
        await poll_until(client, running, lambda t: (t.get("statusMessage") or "").startswith("counted"))
        await poll_until(client, waiting, lambda t: t["status"] == "input_required")
        for task_id in (running, waiting):
            cancelled = await cancel_task(client, task_id)
            assert cancelled["status"] == "cancelled" and cancelled["taskId"] == task_id
            with pytest.raises(MCPError) as again:
                await cancel_task(client, task_id)
            assert again.value.code == -32602
            assert again.value.message == "Cannot cancel task: already in terminal status 'cancelled'"
        result = await task_result(client, running)
        # A negative check, nothing to wait for: a run that went on after its cancel (a step every 0.1 s)
        # would have reported by now.
        await asyncio.sleep(0.3)
        assert (await get_task(client, running))["status"] == "cancelled"
    assert result["isError"] is True and "cancelled" in text(result)


@pytest.mark.parametrize("method", ["get", "result", "cancel"])
async def test_unknown_task_is_invalid_params(stack: tuple[str, Settings], method: str) -> None:
    url, _ = stack
    call = {"get": get_task, "result": task_result, "cancel": cancel_task}[method]
    async with connect(url) as client:
        with pytest.raises(MCPError) as missing:
            await call(client, "no-such-task")
    assert missing.value.code == -32602 and "Task not found" in missing.value.message


async def test_bad_tool_calls_are_invalid_params(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        with pytest.raises(MCPError) as unknown:
            await call_as_task(client, "no_such_tool", {})
        with pytest.raises(MCPError) as wrong:
            await call_as_task(client, "approve_expense", {"amount": "lots"})
    assert unknown.value.code == wrong.value.code == -32602
    assert "no_such_tool" in unknown.value.message
    assert "amount" in wrong.value.message and "description" in wrong.value.message


async def test_tasks_list_pages_with_an_opaque_cursor(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        before = set()
        cursor = None
        while True:
            page = await list_tasks(client, cursor)
            before |= {t["taskId"] for t in page["tasks"]}
            if (cursor := page.get("nextCursor")) is None:
                break
        created = await asyncio.gather(*(call_as_task(client, "count_slowly", {"n": 0}) for _ in range(60)))
        seen: list[str] = []
        pages = 0
        cursor = None
        while True:
            page = await list_tasks(client, cursor)
            pages += 1
            seen += [t["taskId"] for t in page["tasks"]]
            if (cursor := page.get("nextCursor")) is None:
                break
        with pytest.raises(MCPError) as bad:
            await list_tasks(client, "not-a-cursor")
    assert bad.value.code == -32602
    assert pages >= 2 and len(seen) == len(set(seen))
    assert {c["task"]["taskId"] for c in created} | before == set(seen)


async def on_get_stream(session: RawSession, method: str,
                        last: Callable[[dict[str, Any]], bool]) -> tuple[list[dict[str, Any]], asyncio.Task[None]]:
    """Collect the params of each ``method`` notification on the session's GET stream, up to the one
    ``last`` accepts: the list they arrive in, and the task collecting them (the stream is open)."""
    heard: list[dict[str, Any]] = []
    opened = asyncio.Event()

    async def listen() -> None:
        async for message in session.stream(opened):
            if message.get("method") == method:
                heard.append(message["params"])
                if last(message["params"]):
                    return

    listener = asyncio.create_task(listen())
    # Nothing happens before the server has answered the GET: a notification sent earlier would have
    # no stream to go on.
    await until(lambda: opened.is_set() or listener.done(), 30)
    if listener.done():
        listener.result()  # the GET failed: its error
    return heard, listener


async def test_wire_status_notifications_on_the_get_stream(stack: tuple[str, Settings]) -> None:
    """Raw HTTP: the session that created a task hears its status changes on the GET stream.

    (The SDK client drops ``notifications/tasks/status`` at 2025-11-25, so this reads the wire.)
    """
    url, _ = stack
    async with RawSession(url) as session:
        heard, listener = await on_get_stream(session, "notifications/tasks/status",
                                              lambda params: params["status"] == "completed")
        created = await session.call("tools/call", {"name": "count_slowly", "arguments": {"n": 2}, "task": {}})
        assert created["result"]["task"]["status"] in ("working", "completed")
        await asyncio.wait_for(listener, 30)
    statuses = [params["status"] for params in heard]
    assert statuses[-1] == "completed" and set(statuses) <= {"working", "completed"}


async def test_a_task_reports_progress_with_the_creating_requests_token(stack: tuple[str, Settings]) -> None:
    """Raw HTTP: a task-augmented call's progressToken gets notifications/progress on the GET stream
    for the task's whole life, after the call itself has returned."""
    url, _ = stack
    async with RawSession(url) as session:
        progress, listener = await on_get_stream(session, "notifications/progress",
                                                 lambda params: params["progress"] == 4)
        created = await session.call("tools/call", {"name": "count_slowly", "arguments": {"n": 4}, "task": {},
                                                    "_meta": {"progressToken": "tok-7"}})
        assert "task" in created["result"]
        await asyncio.wait_for(listener, 30)
    assert {p["progressToken"] for p in progress} == {"tok-7"}
    assert [p["progress"] for p in progress] == sorted({p["progress"] for p in progress})  # only grows
    assert progress[-1] == {"progressToken": "tok-7", "progress": 4, "total": 4, "message": "counted 4 of 4"}


async def test_a_plain_call_reports_progress_to_the_sdk_client(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    reported: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reported.append((progress, total, message))

    async with connect(url) as client:
        result = await client.call_tool("count_slowly", {"n": 3}, progress_callback=on_progress)
    assert result.content[0].text == "counted 3"
    # Sent while the call waits (whether the last report overtakes the result is up to the transport).
    assert reported and {total for _, total, _ in reported} == {3}
    assert [progress for progress, _, _ in reported] == sorted({progress for progress, _, _ in reported})


async def test_wire_errors_are_json_rpc_errors(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with RawSession(url) as session:
        unknown_method = await session.call("tasks/nope", {})
        missing = await session.call("tasks/get", {})
        unknown = await session.call("tasks/get", {"taskId": "nope"})
    assert unknown_method["error"]["code"] == -32601
    assert missing["error"]["code"] == -32602
    assert unknown["error"] == {"code": -32602, "message": "Failed to retrieve task: Task not found ('nope')"}


def test_task_json_matches_the_sdk_task_model() -> None:
    from ledger.mcp.session_tasks import task_json
    from projections.status import TaskRow
    row = TaskRow("t1", None, "count_slowly", "completed", 1_700_000_000_000, 1_700_000_000_500, None, 500,
                  result_json=json.dumps({"content": []}), is_error=True)
    task = types.Task.model_validate(task_json(row), by_name=False)
    assert task.status == "failed" and task.created_at == "2023-11-14T22:13:20.000Z" and task.ttl is None


async def test_health_and_readiness(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with httpx.AsyncClient() as http:
        health = await http.get(url.replace("/mcp", "/healthz"))
        ready = await http.get(url.replace("/mcp", "/readyz"))
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["lag"] >= 0


async def test_metrics_show_what_the_server_did(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        task_id = (await call_as_task(client, "approve_expense", {"amount": 2, "description": "tea"}))["task"]["taskId"]
        elicitation_id = await first_question(client, task_id)
        with pytest.raises(MCPError):
            await get_task(client, task_id, {RESPONSE: {"elicitationId": elicitation_id, "action": "accept",
                                                        "content": {"approved": "very"}}})
        await get_task(client, task_id, {RESPONSE: {"elicitationId": elicitation_id, "action": "accept",
                                                    "content": {"approved": True}}})
        await poll_until(client, task_id, lambda t: t["status"] == "completed")
    async with httpx.AsyncClient() as http:

        async def scraped() -> str | None:
            text = (await http.get(url.replace("/mcp", "/metrics"))).text
            return text if 'ledger_tasks{status="completed"}' in text and "ledger_tasks{status=\"completed\"} 0.0" \
                not in text else None

        text = await until(scraped)
    for series in ('ledger_events_appended_total{type="TaskCreated"}', "ledger_events_consumed_total",
                   'ledger_rejected_inputs_total{operation="elicitation-response",reason="schema"}',
                   'ledger_request_seconds_count{method="tasks/get"}', "ledger_elicitation_wait_seconds_count",
                   "ledger_consumer_lag"):
        assert series in text, series


def test_the_sdks_request_spans_are_kept_only_under_a_tracer_provider() -> None:
    class Recording(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return trace.NoOpTracer()

    def spans(middleware: list[Any]) -> bool:
        return any(isinstance(m, OpenTelemetryMiddleware) for m in middleware)

    default = Server("spans").middleware
    assert spans(default)  # the SDK's default, so that what ledger drops is there to drop
    assert not spans(without_idle_spans(default, trace.ProxyTracerProvider()))
    assert not spans(without_idle_spans(default, trace.NoOpTracerProvider()))
    assert without_idle_spans(default, Recording()) == default
