"""Raw JSON-RPC over streamable HTTP, for checks of the wire itself."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2 as httpx

PROTOCOL_VERSION = "2025-11-25"
ACCEPT = "application/json, text/event-stream"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class RawSession:
    """initialize → ``Mcp-Session-Id`` → ``notifications/initialized``, then plain calls."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=30)
        self.headers = {"Accept": ACCEPT, "Content-Type": "application/json", **bearer(token)}

    async def __aenter__(self) -> RawSession:
        response = await self._post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "0"}}})
        self.headers["Mcp-Session-Id"] = response.headers["mcp-session-id"]
        self.headers["MCP-Protocol-Version"] = PROTOCOL_VERSION
        await self._post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON-RPC response (``result`` or ``error``) to one request."""
        request_id = next(self._ids)
        response = await self._post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        for message in _messages(response):
            if message.get("id") == request_id:
                return message
        raise AssertionError(f"no response to {method}: {response.text!r}")

    async def stream(self, opened: asyncio.Event | None = None) -> AsyncIterator[dict[str, Any]]:
        """Messages the server sends on the standalone GET stream; ``opened`` is set once the server has
        answered the GET (it has the stream from then on)."""
        async with self._http.stream("GET", self.url, headers={**self.headers, "Accept": "text/event-stream"}) as response:
            assert response.status_code == 200, response.status_code
            if opened is not None:
                opened.set()
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip():
                    yield json.loads(line[5:])

    async def _post(self, message: dict[str, Any]) -> httpx.Response:
        return await self._http.post(self.url, json=message, headers=self.headers)


def _messages(response: httpx.Response) -> list[dict[str, Any]]:
    if response.headers.get("content-type", "").startswith("application/json"):
        return [response.json()]
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()]


MODERN_VERSION = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
NAME_HEADER_FIELDS = {"tools/call": "name", "resources/read": "uri", "tasks/get": "taskId", "tasks/update": "taskId",
                      "tasks/cancel": "taskId"}


class ModernClient:
    """Stateless 2026-07-28 requests: every POST carries the routing headers and the ``_meta`` envelope."""

    def __init__(self, url: str, *, tasks: bool = True, elicitation: bool = True, token: str | None = None,
                 limits: httpx.Limits | None = None) -> None:
        self.url = url
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=30, headers=bearer(token), **({"limits": limits} if limits else {}))
        self.capabilities: dict[str, Any] = {}
        if elicitation:
            self.capabilities["elicitation"] = {"form": {}}
        if tasks:
            self.capabilities["extensions"] = {TASKS: {}}

    async def __aenter__(self) -> ModernClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> dict[str, Any]:
        """The JSON-RPC response (``result`` or ``error``) to one request, with ``status`` (HTTP) added."""
        response = await self.post(method, params, headers)
        message = _messages(response)[-1]
        return {**message, "status": response.status_code}

    async def result(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.call(method, params)
        assert "result" in response, response
        return response["result"]

    async def post(self, method: str, params: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> httpx.Response:
        message, headers = self._request(method, params, headers)
        return await self._http.post(self.url, json=message, headers=headers)

    async def stream(self, method: str, params: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """The messages answering one request, as they arrive (``subscriptions/listen`` streams them)."""
        message, headers = self._request(method, params, None)
        async with self._http.stream("POST", self.url, json=message, headers=headers) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                yield json.loads(await response.aread())
                return
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip():
                    yield json.loads(line[5:])

    def _request(self, method: str, params: dict[str, Any] | None,
                 headers: dict[str, str] | None) -> tuple[dict[str, Any], dict[str, str]]:
        params = dict(params or {})
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientCapabilities": self.capabilities,
            "io.modelcontextprotocol/clientInfo": {"name": "raw-modern-test", "version": "0"},
            **params.get("_meta", {}),
        }
        routing = {"Accept": ACCEPT, "Content-Type": "application/json", "MCP-Protocol-Version": MODERN_VERSION,
                   "Mcp-Method": method}
        if method in NAME_HEADER_FIELDS and NAME_HEADER_FIELDS[method] in params:
            routing["Mcp-Name"] = str(params[NAME_HEADER_FIELDS[method]])
        message = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        return message, {**routing, **(headers or {})}
