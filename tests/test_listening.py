"""``subscriptions/listen`` with task ids, on the raw 2026-07-28 wire: a client follows its tasks
without ``tasks/get``, on a server other than the one that created them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from examples.demo import app as demo
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.raw_http import ModernClient
from tests.support.stack import in_status, serving, tokened_stack, working

SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


@pytest.fixture(scope="module")
async def two_servers(bootstrap: str) -> AsyncIterator[tuple[str, str]]:
    """A worker and two servers sharing nothing but the log."""
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:12]}", partitions=4)
    await ensure_topics(settings)
    async with working(demo, settings), serving(demo, settings, "a") as first, serving(demo, settings, "b") as second:
        yield first, second


async def listened(client: ModernClient, task_ids: list[str], until: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """The messages of a listen stream, up to and including the first for which ``until(message)``."""
    messages: list[dict[str, Any]] = []

    async def read() -> None:
        async for message in client.stream("subscriptions/listen", {"notifications": {"taskIds": task_ids}}):
            messages.append(message)
            if until(message):
                return

    await asyncio.wait_for(read(), timeout)
    return messages


async def test_a_listener_on_another_server_is_pushed_the_question_and_the_result(
        two_servers: tuple[str, str]) -> None:
    first, second = two_servers
    async with ModernClient(first) as creator, ModernClient(second) as listener:
        created = await creator.result("tools/call", {"name": "plan_trip", "arguments": {"destination": "Porto"}})
        task_id = created["taskId"]
        stream = listener.stream("subscriptions/listen", {"notifications": {"taskIds": [task_id, "no-such-task"]}})
        ack = await anext(stream)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["notifications"] == {"taskIds": [task_id]}
        subscription = ack["params"]["_meta"][SUBSCRIPTION_ID]
        pushed: list[dict[str, Any]] = []
        async for message in stream:
            pushed.append(message)
            if message.get("method") != "notifications/tasks":
                break
            task = message["params"]
            assert task["taskId"] == task_id and task["_meta"][SUBSCRIPTION_ID] == subscription
            if task["status"] == "input_required":  # answer each question as it is pushed: no tasks/get
                [(key, request)] = task["inputRequests"].items()
                fields = request["params"]["requestedSchema"]["properties"]
                content = {"start_date": "2026-12-24", "nights": 3} if "nights" in fields else {"confirm": True}
                await creator.result("tasks/update", {"taskId": task_id, "inputResponses": {
                    key: {"action": "accept", "content": content}}})
    statuses = [m["params"]["status"] for m in pushed if m.get("method") == "notifications/tasks"]
    questions = [m["params"]["inputRequests"] for m in pushed if m.get("params", {}).get("status") == "input_required"]
    assert len({key for question in questions for key in question}) == 2  # both questions, each pushed
    assert statuses[-1] == "completed"
    result = [m for m in pushed if m.get("method") == "notifications/tasks"][-1]["params"]["result"]
    assert result["content"][0]["text"] == "booked Porto for 3 nights from 2026-12-24"
    assert pushed[-1]["result"]["_meta"][SUBSCRIPTION_ID] == subscription  # the stream ends once the task has
    assert not any(m.get("method") in ("notifications/progress", "notifications/message") for m in pushed)


async def test_a_task_that_already_ended_is_pushed_once_and_the_stream_ends(two_servers: tuple[str, str]) -> None:
    first, second = two_servers
    async with ModernClient(first) as client:
        created = await client.result("tools/call", {"name": "count_slowly", "arguments": {"n": 1}})
        created = await in_status(client, created["taskId"], "completed")
    async with ModernClient(second) as listener:
        messages = await listened(listener, [created["taskId"]], lambda m: "result" in m and "method" not in m)
    assert [m.get("method") for m in messages] == ["notifications/subscriptions/acknowledged", "notifications/tasks",
                                                   None]
    assert messages[1]["params"]["result"]["content"][0]["text"] == "counted 1"


async def test_listening_needs_the_tasks_extension(two_servers: tuple[str, str]) -> None:
    async with ModernClient(two_servers[0], tasks=False) as without, ModernClient(two_servers[0]) as client:
        refused = await without.call("subscriptions/listen", {"notifications": {"taskIds": ["any"]}})
        malformed = await client.call("subscriptions/listen", {"notifications": {"taskIds": "not-a-list"}})
    assert refused["error"]["code"] == -32021
    assert refused["error"]["data"]["requiredCapabilities"]["extensions"] == {"io.modelcontextprotocol/tasks": {}}
    assert malformed["error"]["code"] == -32602


async def test_another_principals_tasks_are_left_out(bootstrap: str, tmp_path: Path) -> None:
    async with tokened_stack(bootstrap, tmp_path, {"alice-secret": "alice", "bob-secret": "bob"}) as (url, _):
        async with ModernClient(url, token="alice-secret") as alice, ModernClient(url, token="bob-secret") as bob:
            created = await alice.result("tools/call", {"name": "approve_expense",
                                                        "arguments": {"amount": 3, "description": "tea"}})
            messages = await listened(bob, [created["taskId"]], lambda m: "method" not in m)
            mine = await listened(alice, [created["taskId"]], lambda m: m.get("method") == "notifications/tasks")
    assert messages[0]["params"]["notifications"] == {"taskIds": []} and len(messages) == 2  # ack, then the end
    assert mine[1]["params"]["status"] == "input_required"


async def test_only_task_ids_are_honoured(two_servers: tuple[str, str]) -> None:
    async with ModernClient(two_servers[0]) as client:
        discovered = await client.result("server/discover")
        messages = [m async for m in client.stream("subscriptions/listen", {"notifications": {
            "toolsListChanged": True, "resourceSubscriptions": ["ledger://tasks/x"]}})]
    capabilities = discovered["capabilities"]
    assert not capabilities["tools"]["listChanged"] and not capabilities["resources"]["subscribe"]
    assert messages[0]["params"]["notifications"] == {} and "result" in messages[1]  # acknowledged nothing; ended
