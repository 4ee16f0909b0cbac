"""The web timeline at ``/ui``: the page as a user sees it in headless Chromium, its JSON API and its live events."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from examples.demo import app
from ledger.settings import Settings
from ledger.topics import ensure_topics
from tests.raw_http import ModernClient
from tests.stack import serving, working


@pytest.fixture(scope="module")
async def stack(bootstrap: str) -> AsyncIterator[str]:
    """The MCP endpoint URL of a server and a worker on topics of their own."""
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:12]}", partitions=4,
                                 session_timeout_ms=6_000)
    await ensure_topics(settings)
    async with working(app, settings), serving(app, settings) as url:
        yield url


async def until(check: Any, timeout: float = 15) -> Any:
    """Poll until ``check()`` returns something truthy: tasks run, and the read side's store lags behind."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await check()):
        assert asyncio.get_running_loop().time() < deadline, "it never happened"
        await asyncio.sleep(0.05)
    return value


async def start(client: ModernClient, tool: str, arguments: dict[str, Any]) -> str:
    return (await client.result("tools/call", {"name": tool, "arguments": arguments}))["taskId"]


async def question(client: ModernClient, task_id: str) -> str:
    """The key of the question the task waits on, once it waits."""
    async def asked() -> str | None:
        task = await client.result("tasks/get", {"taskId": task_id})
        requests = task.get("inputRequests") or {}
        return next(iter(requests), None) if task["status"] == "input_required" else None
    return await until(asked)


class Rows(HTMLParser):
    """The ``<tr>`` elements of a page, by class: ``{"task": [attrs, ...], "entry": [attrs, ...]}``."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[str, list[dict[str, str | None]]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            shown = dict(attrs)
            for name in (shown.get("class") or "").split():
                self.rows.setdefault(name, []).append(shown)


async def chromium(*args: str) -> str:
    """Run headless Chromium to the end and return what it printed (the event loop keeps serving meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


async def test_the_page_shows_the_tasks_and_the_selected_timeline(stack: str, tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    base = stack.removesuffix("/mcp")
    async with ModernClient(stack) as client, httpx.AsyncClient(base_url=base, timeout=30) as http:
        trip = await start(client, "plan_trip", {"destination": "Rome"})
        dates = await question(client, trip)
        await client.result("tasks/update", {"taskId": trip, "inputResponses": {
            dates: {"action": "accept", "content": {"start_date": "2027-03-01", "nights": 4}}}})
        expense = await start(client, "approve_expense", {"amount": 6, "description": "map"})
        await question(client, expense)

        async def shown() -> bool:
            listed = {t["taskId"]: t["status"] for t in (await http.get("/ui/api/tasks")).json()["tasks"]}
            kinds = [e["kind"] for e in (await http.get(f"/ui/api/tasks/{trip}")).json()["history"]]
            return listed.get(expense) == listed.get(trip) == "input_required" and kinds.count("asked") == 2
        await until(shown)

    page = f"{base}/ui#task={trip}"
    screenshot = tmp_path / "ui.png"
    dom, _ = await asyncio.gather(
        chromium(f"--user-data-dir={tmp_path / 'dom'}", "--dump-dom", page),
        chromium(f"--user-data-dir={tmp_path / 'shot'}", f"--screenshot={screenshot}", "--window-size=1280,800", page))

    rows = Rows(dom).rows
    statuses = {row["data-task-id"]: row["data-status"] for row in rows.get("task", [])}
    assert statuses[trip] == statuses[expense] == "input_required"
    kinds = [row["data-kind"] for row in rows.get("entry", [])]
    assert kinds[0] == "created" and kinds.count("asked") == 2 and "answered" in kinds, kinds
    assert screenshot.stat().st_size > 0 and screenshot.read_bytes().startswith(b"\x89PNG")


async def test_the_api_refuses_unknown_statuses_and_tasks(stack: str) -> None:
    async with httpx.AsyncClient(base_url=stack.removesuffix("/mcp"), timeout=30) as http:
        bad = await http.get("/ui/api/tasks", params={"status": "sleeping"})
        assert bad.status_code == 400 and "status" in bad.json()["error"]
        assert (await http.get("/ui/api/tasks/no-such")).status_code == 404
        page = await http.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


async def test_the_event_stream_announces_a_new_task(stack: str) -> None:
    async with httpx.AsyncClient(base_url=stack.removesuffix("/mcp"), timeout=30) as http, \
            http.stream("GET", "/ui/api/events") as response, ModernClient(stack) as client:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert await anext(lines) == ": connected"  # the stream listens from here on
        task_id = await start(client, "approve_expense", {"amount": 3, "description": "coffee"})
        async with asyncio.timeout(5):
            event = None
            async for line in lines:
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "task" and json.loads(line[5:])["taskId"] == task_id:
                    break
            else:
                pytest.fail("the stream ended without announcing the task")
