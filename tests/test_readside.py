"""The read side over MCP: the read tools and ``ledger://`` resources, on both wires, and who sees what."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ledger.contract.events import ElicitationRequested, TaskCreated
from ledger.service.errors import TaskNotFound
from ledger.service.queries import ReadSide
from ledger.settings import Settings
from projections.projector import Projector, flush
from projections.store import ProjectionStore
from tests.support.factories import sample, written
from tests.support.mcp_client import answer_first_pending, call_as_task, connect, poll_until
from tests.support.raw_http import ModernClient
from tests.support.stack import until


async def tool(client: Any, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result
    return result.structured_content


async def test_a_plan_trip_timeline_through_tools_and_resources(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        trip = (await call_as_task(client, "plan_trip", {"destination": "Rome"}))["task"]["taskId"]
        await answer_first_pending(client, trip, {"start_date": "2027-03-01", "nights": 4})
        await answer_first_pending(client, trip, {"confirm": True})
        await poll_until(client, trip, lambda t: t["status"] == "completed")

        async def finished() -> dict[str, Any] | None:
            shown = await tool(client, "task_history", {"task_id": trip})
            return shown if shown["history"][-1]["kind"] == "completed" else None

        shown = await until(finished)
        kinds = [entry["kind"] for entry in shown["history"]]
        assert kinds[0] == "created" and kinds.count("asked") == 2 and kinds.count("answered") == 2
        answered = [e for e in shown["history"] if e["kind"] == "answered"]
        assert [e["protocol"] for e in answered] == ["2025-11-25/meta", "2025-11-25/meta"]
        assert json.loads(answered[0]["detail"]["content_json"]) == {"start_date": "2027-03-01", "nights": 4}
        assert all({"partition", "offset", "occurredAt", "actor"} <= e.keys() for e in shown["history"])
        assert shown["task"]["status"] == "completed"

        templates = await client.list_resource_templates()
        assert {t.uri_template for t in templates.resource_templates} == {
            "ledger://tasks/{task_id}", "ledger://tasks/{task_id}/history"}
        resource = await client.read_resource(f"ledger://tasks/{trip}/history")
        assert json.loads(resource.contents[0].text) == shown
        task = json.loads((await client.read_resource(f"ledger://tasks/{trip}")).contents[0].text)
        assert task == shown["task"]


async def test_list_and_pending_tools(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with connect(url) as client:
        waiting = (await call_as_task(client, "approve_expense", {"amount": 6, "description": "map"}))["task"]["taskId"]
        await poll_until(client, waiting, lambda t: t["status"] == "input_required")

        async def listed() -> dict[str, Any] | None:
            page = await tool(client, "list_tasks", {"status": "input_required", "tool": "approve_expense"})
            return page if waiting in {t["taskId"] for t in page["tasks"]} else None

        page = await until(listed)
        assert all(t["status"] == "input_required" for t in page["tasks"])
        pending = await tool(client, "pending_elicitations", {})
        assert waiting in {p["taskId"] for p in pending["pendingElicitations"]}
        recent_only = await tool(client, "pending_elicitations", {"older_than_seconds": 3600})
        assert waiting not in {p["taskId"] for p in recent_only["pendingElicitations"]}
        bad = await client.call_tool("list_tasks", {"status": "sleeping"})
        assert bad.is_error and "status" in bad.content[0].text
        missing = await client.call_tool("task_history", {"task_id": "no-such-task"})
        assert missing.is_error and "not found" in missing.content[0].text


async def test_read_tools_answer_the_modern_wire(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url) as client:
        task_id = (await client.result("tools/call", {"name": "count_slowly", "arguments": {"n": 1}}))["taskId"]

        async def done() -> dict[str, Any] | None:
            result = await client.result("tools/call", {"name": "task_history", "arguments": {"task_id": task_id}})
            assert not result.get("isError"), result
            kinds = [e["kind"] for e in result["structuredContent"]["history"]]
            return result if "completed" in kinds else None

        result = await until(done)
        assert result["resultType"] == "complete"
        assert result["structuredContent"]["history"][0]["protocol"] == "2026-07-28/tasks"


async def test_each_principal_sees_its_own_tasks_and_auditors_see_all() -> None:
    projector = Projector()
    events = [sample(TaskCreated, "a1", principal="alice", occurred_at=1),
              sample(TaskCreated, "b1", principal="bob", occurred_at=2),
              sample(ElicitationRequested, "b1", principal="bob", elicitation_id="e", occurred_at=3)]
    for offset, event in enumerate(events):
        projector.apply(written(0, offset, event))
    store = ProjectionStore()
    flush(store, projector.take(), {0: 3})
    read_side = ReadSide(store, auditors={"carol"})
    assert [t["taskId"] for t in (await read_side.tasks("alice"))["tasks"]] == ["a1"]
    assert [t["taskId"] for t in (await read_side.tasks("carol"))["tasks"]] == ["a1", "b1"]
    assert (await read_side.pending("alice"))["pendingElicitations"] == []
    assert [p["taskId"] for p in (await read_side.pending("carol"))["pendingElicitations"]] == ["b1"]
    # what `ledger answer` lists: an auditor may read bob's question, and may not answer it
    assert (await read_side.pending("carol", answerable=True))["pendingElicitations"] == []
    assert [p["taskId"] for p in (await read_side.pending("bob", answerable=True))["pendingElicitations"]] == ["b1"]
    with pytest.raises(TaskNotFound):
        await read_side.history("alice", "b1")
    assert len((await read_side.history("carol", "b1"))["history"]) == 2
