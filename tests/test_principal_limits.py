"""One principal at its limits changes nothing for another: listen streams, 2025-11-25 sessions and
``/ui`` event streams are bounded per principal (``LEDGER_PRINCIPAL_STREAMS``), besides the totals."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx2 as httpx
import pytest

from ledger.settings import Settings
from tests.support.raw_http import ModernClient, RawSession, bearer

LIMIT = 3
TOKENS = {"alice-secret": "alice", "bob-secret": "bob"}


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, Any]:
    return {"principal_streams": LIMIT}


@pytest.fixture(scope="module")
def stack_tokens() -> dict[str, str]:
    return TOKENS


async def test_listen_streams_are_bounded_per_principal(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with AsyncExitStack() as held, ModernClient(url, token="alice-secret") as alice, \
            ModernClient(url, token="bob-secret") as bob:
        task_id = (await alice.result("tools/call", {"name": "approve_expense", "arguments": {
            "amount": 1, "description": "followed"}}))["taskId"]
        for _ in range(LIMIT):
            stream = alice.stream("subscriptions/listen", {"notifications": {"taskIds": [task_id]}})
            held.push_async_callback(stream.aclose)
            assert (await anext(stream))["method"] == "notifications/subscriptions/acknowledged"
        refused = await alice.call("subscriptions/listen", {"notifications": {"taskIds": [task_id]}})
        assert refused["error"]["code"] == -32000 and "LEDGER_PRINCIPAL_STREAMS" in refused["error"]["message"]
        bobs = bob.stream("subscriptions/listen", {"notifications": {"taskIds": []}})
        held.push_async_callback(bobs.aclose)
        assert (await anext(bobs))["method"] == "notifications/subscriptions/acknowledged"


async def test_sessions_are_bounded_per_principal(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with AsyncExitStack() as held:
        for _ in range(LIMIT):
            await held.enter_async_context(RawSession(url, token="alice-secret"))
        with pytest.raises(KeyError):  # no Mcp-Session-Id: the server refused the session
            await held.enter_async_context(RawSession(url, token="alice-secret"))
        bob = await held.enter_async_context(RawSession(url, token="bob-secret"))
        assert "result" in await bob.call("tools/list", {})


async def test_web_event_streams_are_bounded_per_principal(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    events = url.replace("/mcp", "/ui/api/events")
    async with httpx.AsyncClient(timeout=30) as http, AsyncExitStack() as held:
        reading = []  # kept: a line iterator dropped closes its response
        for _ in range(LIMIT):
            response = await held.enter_async_context(http.stream("GET", events, headers=bearer("alice-secret")))
            assert response.status_code == 200
            reading.append(response.aiter_lines())
            await anext(reading[-1])  # the stream is open (": connected")
        refused = await http.get(events, headers=bearer("alice-secret"))
        assert refused.status_code == 429 and "LEDGER_PRINCIPAL_STREAMS" in refused.json()["error"]
        async with http.stream("GET", events, headers=bearer("bob-secret")) as bobs:
            assert bobs.status_code == 200
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(timeout=30) as http:  # closed streams are counted out
        async with http.stream("GET", events, headers=bearer("alice-secret")) as again:
            assert again.status_code == 200
