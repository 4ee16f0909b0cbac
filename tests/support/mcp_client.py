"""Driving a ledger server with the real ``mcp`` SDK client (2025-11-25, legacy handshake)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2 as httpx
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from pydantic import TypeAdapter

from tests.support.stack import until

RAW = TypeAdapter(dict[str, Any])
PENDING = "io.modelcontextprotocol/pending-elicitations"
RESPONSE = "io.modelcontextprotocol/elicitation-response"
Answer = Callable[[types.ElicitRequestFormParams], types.ElicitResult | Awaitable[types.ElicitResult]]


def answers(params: types.ElicitRequestFormParams) -> types.ElicitResult:
    """A person who approves, picks two nights from 1 December, and confirms."""
    fields = params.requested_schema["properties"]
    if "approved" in fields:
        return types.ElicitResult(action="accept", content={"approved": True, "note": "ok"})
    if "nights" in fields:
        return types.ElicitResult(action="accept", content={"start_date": "2026-12-01", "nights": 2})
    return types.ElicitResult(action="accept", content={"confirm": True})


@asynccontextmanager
async def connect(url: str, answer: Answer | None = None, seen: list | None = None,
                  http: httpx.AsyncClient | None = None) -> AsyncIterator[Client]:
    """A client; with ``answer`` (a function or a coroutine function) it declares elicitation support and
    answers relayed elicitations; with ``http`` it speaks through that HTTP client (one that signs in, say)."""
    async def elicited(ctx: Any, params: types.ElicitRequestFormParams) -> types.ElicitResult:
        if seen is not None:
            seen.append(params)
        answered = answer(params)
        return await answered if inspect.isawaitable(answered) else answered

    callback = elicited if answer is not None else None
    target = streamable_http_client(url, http_client=http) if http is not None else url
    async with Client(target, mode="legacy", elicitation_callback=callback, read_timeout_seconds=60) as client:
        yield client


async def call_as_task(client: Client, name: str, arguments: dict[str, Any], ttl: int | None = None) -> dict[str, Any]:
    # The SDK client validates every tools/call result as a CallToolResult and so rejects the
    # CreateTaskResult a task-augmented call returns; this one request goes below that check.
    params = {"name": name, "arguments": arguments, "task": {} if ttl is None else {"ttl": ttl}}
    return await client.session._dispatcher.send_raw_request("tools/call", params, None)


async def get_task(client: Client, task_id: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    params = types.GetTaskRequestParams(task_id=task_id, _meta=meta)
    return await client.session.send_request(types.GetTaskRequest(params=params), RAW)


async def task_result(client: Client, task_id: str) -> dict[str, Any]:
    params = types.GetTaskPayloadRequestParams(task_id=task_id)
    return await client.session.send_request(types.GetTaskPayloadRequest(params=params), RAW)


async def list_tasks(client: Client, cursor: str | None = None) -> dict[str, Any]:
    params = types.PaginatedRequestParams(cursor=cursor)
    return await client.session.send_request(types.ListTasksRequest(params=params), RAW)


async def cancel_task(client: Client, task_id: str) -> dict[str, Any]:
    params = types.CancelTaskRequestParams(task_id=task_id)
    return await client.session.send_request(types.CancelTaskRequest(params=params), RAW)


async def poll_until(client: Client, task_id: str, done: Callable[[dict[str, Any]], bool],
                     timeout: float = 30) -> dict[str, Any]:
    """Poll ``tasks/get`` every 0.1 s until ``done(task)``; the task then."""
    task: dict[str, Any] = {}

    async def finished() -> dict[str, Any] | None:
        nonlocal task
        task = await get_task(client, task_id)
        return task if done(task) else None

    return await until(finished, timeout, lambda: f"task {task_id} still {task.get('status')} after {timeout}s",
                       interval=0.1)


async def first_question(client: Client, task_id: str) -> str:
    """Wait until the task asks; the elicitation id of its first pending question (``_meta`` pattern)."""
    task = await poll_until(client, task_id, lambda t: t["status"] == "input_required")
    return task["_meta"][PENDING][0]["elicitationId"]


async def answer_first_pending(client: Client, task_id: str, content: dict[str, Any]) -> dict[str, Any]:
    """Wait until the task asks, then accept its first pending question with ``content``; the task as
    the answering ``tasks/get`` returns it (``_meta`` pattern)."""
    elicitation_id = await first_question(client, task_id)
    return await get_task(client, task_id, {RESPONSE: {"elicitationId": elicitation_id, "action": "accept",
                                                       "content": content}})
