"""A server (uvicorn, real HTTP) and a worker in the test process, on a real broker."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn

from ledger.cli.roles import HttpServer
from ledger.engine.app import App
from ledger.engine.worker import Worker
from ledger.http.app import create_app
from ledger.http.connections import uvicorn_options
from ledger.kafka.broker import free_port
from ledger.kafka.topics import ensure_topics
from ledger.service.live_view import LiveView
from ledger.settings import Settings


@asynccontextmanager
async def serving(app: App, settings: Settings, instance: str = "test", port: int | None = None) -> AsyncIterator[str]:
    """Serve ``app`` over HTTP (on ``port``, else a free one); yields the MCP endpoint URL."""
    port = port or free_port()
    server = HttpServer(uvicorn.Config(create_app(app, settings, instance, port=port), host="127.0.0.1", port=port,
                                       log_level="warning", lifespan="on", **uvicorn_options(settings)))
    task = asyncio.create_task(server.serve())

    def serving_caught_up() -> bool:
        if task.done():
            task.result()  # it stopped before it served: its error
        return server.started and server.config.app.state.caught_up.is_set()

    url = f"http://127.0.0.1:{port}/mcp"
    try:
        await until(serving_caught_up, 60)
        _served[url] = server.config.app
        yield url
    finally:
        _served.pop(url, None)
        server.should_exit = True
        await task


_served: dict[str, Any] = {}  # the apps ``serving`` serves, by URL


def served_view(url: str) -> LiveView:
    """The live view of the server ``serving`` runs at ``url``."""
    return _served[url].state.view


@asynccontextmanager
async def working(app: App, settings: Settings, worker_id: str = "w0") -> AsyncIterator[Worker]:
    async with running(Worker(app, settings, worker_id=worker_id)) as worker:
        yield worker


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """``worker`` running until the block ends, once the group has given it partitions."""
    ready = asyncio.Event()
    task = asyncio.create_task(worker.run(ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        yield worker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until(check: Callable[[], Any], timeout: float = 15, failure: Callable[[], str] | None = None,
                interval: float = 0.05) -> Any:
    """Poll until ``check()`` (a function or a coroutine function) returns something truthy, every
    ``interval`` seconds, and return that: tasks run, processes start, and the read side's store lags
    behind. The one way tests wait for something to happen; past ``timeout`` seconds the test fails
    with ``failure()``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (value := await _checked(check)):
        assert asyncio.get_running_loop().time() < deadline, failure() if failure else "it never happened"
        await asyncio.sleep(interval)
    return value


async def _checked(check: Callable[[], Any]) -> Any:
    value = check()
    return await value if inspect.isawaitable(value) else value


@asynccontextmanager
async def demo_stack(bootstrap: str, port: int | None = None, **overrides: Any) -> AsyncIterator[tuple[str, Settings]]:
    """The demo tools served over HTTP (on ``port``, else a free one) with a worker, on topics of their
    own: (MCP URL, settings)."""
    from examples.demo import app as demo

    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:12]}", partitions=4,
                                 session_timeout_ms=6_000, **overrides)
    await ensure_topics(settings)
    async with working(demo, settings), serving(demo, settings, port=port) as url:
        yield url, settings


@asynccontextmanager
async def tokened_stack(bootstrap: str, folder: Path, tokens: dict[str, str],
                        **overrides: Any) -> AsyncIterator[tuple[str, Settings]]:
    """``demo_stack`` on a server that takes bearer tokens (token -> principal)."""
    tokens_file = folder / "tokens"
    tokens_file.write_text("".join(f"{token} {principal}\n" for token, principal in tokens.items()))
    async with demo_stack(bootstrap, tokens_file=str(tokens_file), **overrides) as stack:
        yield stack


async def in_status(client: Any, task_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    """The task (through the tasks extension) once it is in ``status``."""
    async def reached() -> dict[str, Any] | None:
        task = await client.result("tasks/get", {"taskId": task_id})
        return task if task["status"] == status else None

    return await until(reached, timeout)


async def answer_through_tasks(client: Any, task_id: str, content: dict[str, Any]) -> None:
    """Wait until the task asks, then accept its question with ``content`` (``tasks/update``)."""
    key = next(iter((await in_status(client, task_id, "input_required"))["inputRequests"]))
    await client.result("tasks/update", {"taskId": task_id, "inputResponses": {
        key: {"action": "accept", "content": content}}})


async def approve_through_tasks(client: Any, amount: float, description: str) -> tuple[str, str]:
    """approve_expense through the tasks extension, approved; its task id and result text."""
    task_id = (await client.result("tools/call", {"name": "approve_expense", "arguments": {
        "amount": amount, "description": description}}))["taskId"]
    await answer_through_tasks(client, task_id, {"approved": True})
    return task_id, (await in_status(client, task_id, "completed"))["result"]["content"][0]["text"]
