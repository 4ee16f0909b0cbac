"""Clients against ``ledger dev``, as a user runs it: the FastMCP 4 client with fastmcp-tasks
(tasks extension) and without it (multi round-trip requests), each in its own process; the
``mcp`` SDK's modern client with and without a tasks extension; and raw HTTP."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ledger.contract.events import ResponseSubmitted, TaskCancelled, TaskCreated
from ledger.settings import Settings
from tests.support.engine import all_events
from tests.support.modern_client import modern_client
from tests.support.raw_http import ModernClient
from tests.support.stack import until

FLOWS = "tests/interop/fastmcp_flows.py"


def fastmcp(url: str, mode: str) -> dict[str, str]:
    finished = subprocess.run([sys.executable, FLOWS, url, mode], capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode,protocol", [("tasks", "2026-07-28/tasks"), ("mrtr", "2026-07-28/mrtr")])
async def test_the_fastmcp_client_completes_the_demo_tools(dev: tuple[str, Settings], mode: str,
                                                            protocol: str) -> None:
    url, settings = dev
    report = fastmcp(url, mode)
    assert report["approve_expense"] == "approved 12.5"
    assert report["plan_trip"] == "booked Lisbon for 2 nights from 2026-12-01"
    if mode == "tasks":
        assert report["cancelled"] == "cancelled"
    events = await all_events(settings)
    created = {e.task_id: e for e in events if isinstance(e, TaskCreated) and e.protocol == protocol}
    assert {e.tool for e in created.values()} >= {"approve_expense", "plan_trip"}
    answered = [e for e in events if isinstance(e, ResponseSubmitted) and e.task_id in created]
    assert len(answered) == 3 and {e.protocol for e in answered} == {protocol}
    if mode == "tasks":
        assert any(isinstance(e, TaskCancelled) and e.task_id in created for e in events)


@pytest.mark.parametrize("with_tasks", [True, False], ids=["tasks extension", "multi round-trip"])
async def test_the_sdk_modern_client_completes_the_demo_tools(dev: tuple[str, Settings], with_tasks: bool) -> None:
    url, _ = dev
    async with modern_client(url, with_tasks=with_tasks) as client:
        assert (await client.call_tool("approve_expense", {"amount": 5, "description": "tea"})).content[0].text \
            == "approved 5"
        trip = await client.call_tool("plan_trip", {"destination": "Faro"})
        assert trip.content[0].text == "booked Faro for 2 nights from 2026-12-01"


async def test_a_raw_http_client_completes_the_demo_tools(dev: tuple[str, Settings]) -> None:
    url, _ = dev
    replies = {"approved": {"approved": True}, "nights": {"start_date": "2027-01-10", "nights": 5},
               "confirm": {"confirm": True}}
    async with ModernClient(url) as client:
        for name, arguments, expected in [
            ("approve_expense", {"amount": 9, "description": "bus"}, "approved 9"),
            ("plan_trip", {"destination": "Braga"}, "booked Braga for 5 nights from 2027-01-10"),
        ]:
            task_id = (await client.result("tools/call", {"name": name, "arguments": arguments}))["taskId"]

            async def completed(task_id: str = task_id) -> dict | None:
                """The task once completed; until then, each question it asks answered."""
                task = await client.result("tasks/get", {"taskId": task_id})
                if task["status"] == "completed":
                    return task
                assert task["status"] in ("working", "input_required"), task
                for key, request in task.get("inputRequests", {}).items():
                    field = next(f for f in replies if f in request["params"]["requestedSchema"]["properties"])
                    await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
                        key: {"action": "accept", "content": replies[field]}}})
                return None

            task = await until(completed, 60)
            assert task["result"]["content"][0]["text"] == expected
