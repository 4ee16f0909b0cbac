"""MCP 2026-07-28 against a real server over HTTP: the tasks extension and multi round-trip requests.

Raw JSON-RPC for the wire (stateless requests, routing headers, errors), and the real SDK client in
its modern mode. Tasks created through either wire are read through the other.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest

from ledger.contract.events import RequestRejected, ResponseSubmitted, TaskCancelled, TaskCreated, TaskEvent
from ledger.settings import Settings
from tests.support.engine import all_events, history
from tests.support.mcp_client import answer_first_pending, call_as_task, connect, get_task, poll_until
from tests.support.modern_client import modern_client
from tests.support.raw_http import TASKS, ModernClient
from tests.support.spawn import busy_cores
from tests.support.stack import demo_stack, in_status, served_view, serving, until

STATE_KEY = "k" * 40


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, Any]:
    return {"request_state_key": STATE_KEY, "round_wait_ms": 3_000}


async def settle(client: ModernClient, task_id: str, done: Any = None, timeout: float = 30) -> dict[str, Any]:
    """Poll tasks/get until ``done(task)`` (default: not working)."""
    done = done or (lambda t: t["status"] != "working")
    task: dict[str, Any] = {}

    async def settled() -> dict[str, Any] | None:
        nonlocal task
        task = await client.result("tasks/get", {"taskId": task_id})
        return task if done(task) else None

    return await until(settled, timeout, lambda: f"task {task_id} still {task.get('status')}")


def only_request(task_or_result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (key, request), = task_or_result["inputRequests"].items()
    assert request["method"] == "elicitation/create"
    return key, request["params"]


async def test_discover_advertises_the_tasks_extension(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url) as client:
        response = await client.call("server/discover")
        assert response["status"] == 200
        result = response["result"]
        assert "2026-07-28" in result["supportedVersions"]
        assert result["capabilities"]["extensions"] == {TASKS: {}}
        listed = await client.result("tools/list")
        assert {t["name"] for t in listed["tools"]} >= {"approve_expense", "plan_trip", "count_slowly"}
        assert "mcp-session-id" not in (await client.post("tools/list")).headers


async def test_approve_expense_through_the_tasks_extension(stack: tuple[str, Settings]) -> None:
    url, settings = stack
    async with ModernClient(url) as client:
        created = await client.result("tools/call", {"name": "approve_expense",
                                                     "arguments": {"amount": 12.5, "description": "dinner"}})
        assert created["resultType"] == "task"
        assert {"taskId", "status", "createdAt", "lastUpdatedAt", "ttlMs", "pollIntervalMs"} <= created.keys()
        task_id = created["taskId"]
        task = await settle(client, task_id)
        assert task["status"] == "input_required" and task["resultType"] == "complete"
        key, request = only_request(task)
        assert request["requestedSchema"]["required"] == ["approved"]

        bad = await client.call("tasks/update", {"taskId": task_id, "inputResponses": {
            key: {"action": "accept", "content": {"approved": "yes"}}}})
        assert bad["error"]["code"] == -32602 and "schema" in bad["error"]["message"]
        assert (await client.result("tasks/get", {"taskId": task_id}))["status"] == "input_required"
        unknown = await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
            "no-such-key": {"action": "accept", "content": {"approved": True}}}})
        assert unknown["resultType"] == "complete"  # ignored, as SEP-2663 asks
        assert (await client.result("tasks/get", {"taskId": task_id}))["status"] == "input_required"

        ack = await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
            key: {"action": "accept", "content": {"approved": True}}}})
        assert ack == {"resultType": "complete", **({"_meta": ack["_meta"]} if "_meta" in ack else {})}
        task = await settle(client, task_id, lambda t: t["status"] in ("completed", "failed", "cancelled"))
        assert task["status"] == "completed"
        assert task["result"]["content"][0]["text"] == "approved 12.5"
        conflicting = await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
            key: {"action": "decline"}}})
        assert conflicting["resultType"] == "complete"  # the key is answered: ignored
    events = await history(settings, task_id)
    assert next(e for e in events if isinstance(e, TaskCreated)).protocol == "2026-07-28/tasks"
    assert [e.protocol for e in events if isinstance(e, ResponseSubmitted)] == ["2026-07-28/tasks"]
    rejected = [e for e in events if isinstance(e, RequestRejected)]
    assert len(rejected) == 3 and {e.protocol for e in rejected} == {"2026-07-28/tasks"}


async def test_plan_trip_through_multi_round_trip_requests(stack: tuple[str, Settings]) -> None:
    url, settings = stack
    call = {"name": "plan_trip", "arguments": {"destination": "Lisbon"}}
    async with ModernClient(url, tasks=False) as client:
        first = await client.result("tools/call", call)
        assert first["resultType"] == "input_required" and first["requestState"].startswith("v1.")
        key, request = only_request(first)
        assert request["requestedSchema"]["properties"]["start_date"]["format"] == "date"

        tampered = await client.call("tools/call", {**call, "requestState": first["requestState"][:-4] + "AAAA",
                                                    "inputResponses": {key: {"action": "accept", "content": {
                                                        "start_date": "2026-12-01", "nights": 3}}}})
        assert tampered["error"]["code"] == -32602 and "requestState" in tampered["error"]["message"]
        other_call = await client.call("tools/call", {"name": "plan_trip", "arguments": {"destination": "Oslo"},
                                                      "requestState": first["requestState"]})
        assert other_call["error"]["code"] == -32602

        second = await client.result("tools/call", {**call, "requestState": first["requestState"], "inputResponses": {
            key: {"action": "accept", "content": {"start_date": "2026-12-01", "nights": 3}}}})
        assert second["resultType"] == "input_required"
        confirm_key, confirm = only_request(second)
        assert confirm_key != key and "confirm" in confirm["requestedSchema"]["properties"]
        done = await client.result("tools/call", {**call, "requestState": second["requestState"], "inputResponses": {
            confirm_key: {"action": "accept", "content": {"confirm": True}}}})
        assert done["resultType"] == "complete"
        assert "Lisbon" in done["content"][0]["text"] and "3 nights" in done["content"][0]["text"]
    events = await all_events(settings)
    task_id = next(e.task_id for e in events if isinstance(e, TaskCreated) and "Lisbon" in e.arguments_json)
    assert next(e for e in events if isinstance(e, TaskCreated) and e.task_id == task_id).protocol == "2026-07-28/mrtr"
    answers = [e.protocol for e in events if isinstance(e, ResponseSubmitted) and e.task_id == task_id]
    assert answers == ["2026-07-28/mrtr", "2026-07-28/mrtr"]


async def test_a_long_tool_without_tasks_answers_input_required_until_it_is_done(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    call = {"name": "count_slowly", "arguments": {"n": 40}}  # ~4 s; the server waits at most 3 s a round
    async with ModernClient(url, tasks=False) as client:
        first = await client.result("tools/call", call)
        assert first["resultType"] == "input_required" and "inputRequests" not in first
        done = await client.result("tools/call", {**call, "requestState": first["requestState"]})
        assert done["resultType"] == "complete" and done["content"][0]["text"] == "counted 40"


async def test_answers_to_keys_not_outstanding_are_ignored_and_recorded_once(stack: tuple[str, Settings]) -> None:
    url, settings = stack
    async with ModernClient(url) as client:
        task_id = (await client.result("tools/call", {"name": "approve_expense", "arguments": {
            "amount": 12, "description": "stale keys"}}))["taskId"]
        key = next(iter((await in_status(client, task_id, "input_required"))["inputRequests"]))
        bogus = {f"never-asked-{i}": {"action": "accept", "content": {"approved": False, "note": "x" * 100}}
                 for i in range(2_000)}
        # A stale key beside the outstanding one does not stop it being applied.
        acknowledged = await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
            **bogus, key: {"action": "accept", "content": {"approved": True}}}})
        assert acknowledged["resultType"] == "complete"
        assert (await in_status(client, task_id, "completed"))["result"]["content"][0]["text"] == "approved 12"
        # The answered key again, with another answer: ignored too.
        await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
            key: {"action": "decline"}}})
    events = await history(settings, task_id)
    ignored = [e for e in events if isinstance(e, RequestRejected)]
    assert [e.reason.split(":")[0] for e in ignored] == ["ignored", "ignored"]
    assert "2000 answer(s)" in ignored[0].reason and len(ignored[0].reason) < 500
    assert all(len(e.payload_json or "") < 200 for e in ignored)  # a digest, not the 300 KB that was sent
    answers = [e for e in events if isinstance(e, ResponseSubmitted)]
    assert [(e.elicitation_id, e.action) for e in answers] == [(key, "accept")]


async def test_a_question_to_a_client_that_cannot_answer_cancels_the_task(stack: tuple[str, Settings]) -> None:
    url, settings = stack
    async with ModernClient(url, tasks=False, elicitation=False) as mute:
        refused = await mute.call("tools/call", {"name": "approve_expense", "arguments": {
            "amount": 9, "description": "nobody can approve this"}})
    assert refused["error"]["code"] == -32021, refused
    task_id = refused["error"]["message"].split()[1]
    async with ModernClient(url) as reader:
        task = await in_status(reader, task_id, "cancelled")
    assert "cannot answer questions" in task["statusMessage"]
    assert [type(e).__name__ for e in await history(settings, task_id)][-1] == "TaskCancelled"


async def test_extension_methods_need_the_extension_and_removed_methods_are_gone(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url) as with_tasks, ModernClient(url, tasks=False) as without:
        task_id = (await with_tasks.result("tools/call", {"name": "count_slowly", "arguments": {"n": 1}}))["taskId"]
        for method, params in [("tasks/get", {"taskId": task_id}), ("tasks/cancel", {"taskId": task_id}),
                               ("tasks/update", {"taskId": task_id, "inputResponses": {}})]:
            refused = await without.call(method, params)
            assert refused["error"]["code"] == -32021, refused
            assert refused["error"]["data"]["requiredCapabilities"]["extensions"] == {TASKS: {}}
        for method in ("tasks/result", "tasks/list"):
            assert (await with_tasks.call(method, {"taskId": task_id}))["error"]["code"] == -32601
        mismatch = await with_tasks.call("tasks/get", {"taskId": task_id}, headers={"Mcp-Name": "another-task"})
        assert mismatch["error"]["code"] == -32020
        missing = await with_tasks.call("tasks/get", {"taskId": str(uuid.uuid4())})
        assert missing["error"]["code"] == -32602
        wrong_version = await with_tasks.call("tools/list", headers={"MCP-Protocol-Version": "2099-01-01"})
        assert wrong_version["status"] == 400 and wrong_version["error"]["code"] in (-32020, -32022)


async def test_requests_that_move_a_task_answer_once_it_needs_the_client_again(bootstrap: str) -> None:
    """LEDGER_SETTLE_MS: tools/call answers once the tool asked and an answer once the tool ended, so
    the client's next tasks/get finds that step; a tool still working when the wait is up is
    answered ``working``."""
    async with demo_stack(bootstrap, settle_ms=5_000) as (url, _):
        async with ModernClient(url) as client:
            created = await client.result("tools/call", {"name": "approve_expense",
                                                         "arguments": {"amount": 3.5, "description": "tea"}})
            assert created["status"] == "input_required"
            key, _ = only_request(await client.result("tasks/get", {"taskId": created["taskId"]}))
            await client.result("tasks/update", {"taskId": created["taskId"], "inputResponses": {
                key: {"action": "accept", "content": {"approved": True}}}})
            done = await client.result("tasks/get", {"taskId": created["taskId"]})
            assert done["status"] == "completed" and done["result"]["content"][0]["text"] == "approved 3.5"

            slow = await client.result("tools/call", {"name": "count_slowly", "arguments": {"n": 200}})
            assert slow["status"] == "working"
            await client.result("tasks/cancel", {"taskId": slow["taskId"]})

        async with connect(url) as legacy:
            task_id = (await call_as_task(legacy, "approve_expense", {"amount": 4.5, "description": "cake"}))[
                "task"]["taskId"]
            answered = await answer_first_pending(legacy, task_id, {"approved": True})
            assert answered["status"] == "completed"


async def test_an_answer_to_a_server_that_has_not_read_the_question_yet_is_applied(bootstrap: str) -> None:
    """Two servers: the client gets the second question from one and answers it through the other,
    whose view is behind (the embedded broker holds each of its fetches for the whole 8 s wait). The
    answer waits for that view to read the log as it is now instead of being refused."""
    from examples.demo import app as demo

    async with demo_stack(bootstrap) as (url, settings):
        lagging = replace(settings, fetch_max_wait_ms=8_000, idle_fetch_wait_ms=8_000)
        async with serving(demo, lagging, "lagging") as behind_url, ModernClient(url) as ahead, \
                ModernClient(behind_url) as behind:
            task_id = (await ahead.result("tools/call", {"name": "plan_trip", "arguments": {"destination": "Oslo"}}))[
                "taskId"]
            dates, _ = only_request(await in_status(behind, task_id, "input_required"))
            await ahead.result("tasks/update", {"taskId": task_id, "inputResponses": {
                dates: {"action": "accept", "content": {"start_date": "2026-12-01", "nights": 3}}}})
            confirm, _ = only_request(await in_status(ahead, task_id, "input_required"))
            assert confirm != dates
            await behind.result("tasks/update", {"taskId": task_id, "inputResponses": {
                confirm: {"action": "accept", "content": {"confirm": True}}}})
            done = await in_status(behind, task_id, "completed")
            assert done["result"]["content"][0]["text"] == "booked Oslo for 3 nights from 2026-12-01"


@pytest.mark.slow
async def test_a_server_finds_and_takes_answers_for_what_another_server_wrote_a_moment_ago(bootstrap: str) -> None:
    """Two servers, every core busy: each task is created through one, then looked up and answered
    through the other the moment the first shows its question. The second server reads the log to its
    end as it is now before it says "not found" or sets an answer aside as not outstanding (on the
    embedded broker, two fetches were not always enough: CI lost an answer that way)."""
    from examples.demo import app as demo

    async with demo_stack(bootstrap) as (url, settings), serving(demo, settings, "second") as second_url, \
            ModernClient(url) as first, ModernClient(second_url) as second:
        with busy_cores():
            for amount in range(60):
                task_id = (await first.result("tools/call", {"name": "approve_expense", "arguments": {
                    "amount": amount, "description": "at once"}}))["taskId"]
                await second.result("tasks/get", {"taskId": task_id})
                key, _ = only_request(await in_status(first, task_id, "input_required"))
                await second.result("tasks/update", {"taskId": task_id, "inputResponses": {
                    key: {"action": "accept", "content": {"approved": True}}}})
                assert (await in_status(first, task_id, "completed", timeout=15))["result"]["content"][0][
                    "text"] == f"approved {amount}"


async def test_an_answer_a_server_cannot_place_while_it_cannot_read_the_log_is_refused_not_set_aside(
        bootstrap: str) -> None:
    """A server whose view has stopped reading is sent the answer to a question it has not read: it
    cannot tell an outstanding question from a stale one, so it records nothing and says so, where it
    used to ignore the answer as not outstanding (and the task waited for ever). Sent again once it
    reads, the answer is taken."""
    from examples.demo import app as demo

    async with demo_stack(bootstrap) as (url, settings), \
            serving(demo, replace(settings, read_timeout_ms=500), "stalled") as stalled_url, \
            ModernClient(url) as reading, ModernClient(stalled_url) as stalled:
        task_id = (await reading.result("tools/call", {"name": "plan_trip", "arguments": {"destination": "Rome"}}))[
            "taskId"]
        dates, _ = only_request(await in_status(stalled, task_id, "input_required"))
        reader = served_view(stalled_url)._reader
        for partition in reader.partitions():
            reader.hold(partition, True)
        await reading.result("tasks/update", {"taskId": task_id, "inputResponses": {
            dates: {"action": "accept", "content": {"start_date": "2026-12-01", "nights": 2}}}})
        confirm, _ = only_request(await in_status(reading, task_id, "input_required"))
        answer = {"taskId": task_id, "inputResponses": {confirm: {"action": "accept", "content": {"confirm": True}}}}
        refused = await stalled.call("tasks/update", answer)
        assert refused["error"]["code"] == -32603 and refused["error"]["message"].startswith("Nothing was recorded")
        assert not [e for e in await all_events(settings) if isinstance(e, (ResponseSubmitted, RequestRejected))
                    and e.elicitation_id == confirm]
        for partition in reader.partitions():
            reader.hold(partition, False)
        await stalled.result("tasks/update", answer)
        done = await in_status(reading, task_id, "completed")
        assert done["result"]["content"][0]["text"] == "booked Rome for 2 nights from 2026-12-01"


async def test_cancel_through_the_extension_stops_the_task(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url) as client:
        task_id = (await client.result("tools/call", {"name": "count_slowly", "arguments": {"n": 100}}))["taskId"]
        await settle(client, task_id, lambda t: "counted" in (t.get("statusMessage") or ""))
        assert (await client.result("tasks/cancel", {"taskId": task_id}))["resultType"] == "complete"
        assert (await settle(client, task_id, lambda t: t["status"] != "working"))["status"] == "cancelled"
        # Cancelling a finished task is acknowledged on this wire (cancellation is eventually consistent);
        # only an unknown task is an error.
        assert (await client.result("tasks/cancel", {"taskId": task_id}))["resultType"] == "complete"
        assert (await client.call("tasks/cancel", {"taskId": str(uuid.uuid4())}))["error"]["code"] == -32602


async def test_tasks_cross_the_two_wires(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as legacy, ModernClient(url) as modern:
        old = (await call_as_task(legacy, "approve_expense", {"amount": 3, "description": "pens"}))["task"]["taskId"]
        await poll_until(legacy, old, lambda t: t["status"] == "input_required")
        seen = await modern.result("tasks/get", {"taskId": old})
        key, _ = only_request(seen)
        await modern.result("tasks/update", {"taskId": old, "inputResponses": {
            key: {"action": "accept", "content": {"approved": False}}}})
        finished = await settle(modern, old, lambda t: t["status"] == "completed")
        assert finished["result"]["content"][0]["text"] == "rejected 3"

        new = (await modern.result("tools/call", {"name": "approve_expense",
                                                  "arguments": {"amount": 4, "description": "ink"}}))["taskId"]
        await settle(modern, new)
        legacy_view = await get_task(legacy, new)
        assert legacy_view["status"] == "input_required" and legacy_view["pollInterval"] > 0


@pytest.mark.parametrize("with_tasks", [True, False], ids=["tasks extension", "multi round-trip"])
async def test_the_sdk_modern_client_completes_both_tools(stack: tuple[str, Settings], with_tasks: bool) -> None:
    url, _ = stack
    async with modern_client(url, with_tasks=with_tasks) as client:
        approved = await client.call_tool("approve_expense", {"amount": 7, "description": "taxi"})
        assert approved.content[0].text == "approved 7"
        trip = await client.call_tool("plan_trip", {"destination": "Porto"})
        assert "Porto" in trip.content[0].text and "2 nights" in trip.content[0].text


async def test_an_abandoned_multi_round_trip_task_is_cancelled_and_one_continued_by_a_tasks_client_is_not(
        bootstrap: str) -> None:
    """Past LEDGER_REQUEST_STATE_TTL_MS no requestState can continue a round, so a task left waiting on
    its question is cancelled with why (it waited forever before); and a retry that carries a
    requestState continues its round even when the client now declares the tasks extension (it started
    a new task and dropped the answer before)."""
    async with demo_stack(bootstrap, request_state_key=STATE_KEY, request_state_ttl_ms=2_000) as (url, settings):
        call = {"name": "approve_expense", "arguments": {"amount": 9, "description": "left"}}
        async with ModernClient(url, tasks=False) as plain, ModernClient(url) as with_tasks:
            left = await plain.result("tools/call", call)
            kept = await plain.result("tools/call", {**call, "arguments": {"amount": 10, "description": "kept"}})
            key, _ = only_request(kept)
            done = await with_tasks.result("tools/call", {**call, "arguments": {"amount": 10, "description": "kept"},
                                                          "requestState": kept["requestState"], "inputResponses": {
                                                              key: {"action": "accept", "content": {"approved": True}}}})
            assert done["resultType"] == "complete" and done["content"][0]["text"] == "approved 10", done
            assert left["resultType"] == "input_required"

        async def abandoned() -> list[TaskEvent]:
            return [e for e in await all_events(settings) if isinstance(e, TaskCancelled)]

        cancelled = await until(abandoned, 30)
        assert len(cancelled) == 1 and cancelled[0].reason.startswith("Abandoned"), cancelled
        created = {e.task_id: e for e in await all_events(settings) if isinstance(e, TaskCreated)}
        assert "left" in created[cancelled[0].task_id].arguments_json and len(created) == 2
