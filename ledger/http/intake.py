"""What a request body must be before anything reads it: bounded, arriving in time, and on ``/mcp`` one
JSON-RPC message whose kind is clear (and not a second ``initialize`` of a session).

The body is read here once, whole (it is at most the limit), and handed on unchanged. A request the
SDK would misread is answered here instead: a ``tools/call`` without an id looks like a notification
to it, so it would start work whose task id nobody learns; a batch array gets a validation dump.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger.pauses import settles_on_waking

INVALID_REQUEST = -32600
BODY_READ_TIMEOUT_S = 10.0
TOO_DEEP = "Parse error: the JSON is nested too deep to read"


class BodyTooLarge(Exception):
    pass


class Intake:
    """Refuse POST bodies over ``limit`` bytes (413), bodies not received within ``read_timeout_s``
    (408), and on ``/mcp`` batches and requests without a usable id (-32600)."""

    def __init__(self, app: ASGIApp, limit: int, read_timeout_s: float = BODY_READ_TIMEOUT_S) -> None:
        self.app = app
        self.limit = limit
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send, 413, f"Request body over {self.limit:,} bytes "
                                                            f"(LEDGER_MAX_INPUT_BYTES)")
            return
        try:
            body = await self._read_in_time(receive)
        except BodyTooLarge:
            await self._refuse(scope, receive, send, 413, f"Request body over {self.limit:,} bytes "
                                                            f"(LEDGER_MAX_INPUT_BYTES)")
            return
        except TimeoutError:
            await self._refuse(scope, receive, send, 408, f"The request body did not arrive within "
                                                            f"{self.read_timeout_s:g} s")
            return
        in_session = b"mcp-session-id" in dict(scope.get("headers", ()))
        problem = jsonrpc_problem(body, in_session) if scope["path"] in ("/mcp", "/mcp/") else None
        if problem is not None:
            await self._refuse(scope, receive, send, 400, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_in_time(self, receive: Receive) -> bytes:
        reading = asyncio.ensure_future(self._read(receive))
        try:
            done, _ = await asyncio.wait({reading}, timeout=self.read_timeout_s)
            if not done and not await settles_on_waking(reading):
                raise TimeoutError
            return reading.result()
        finally:
            reading.cancel()

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        response = JSONResponse({"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}},
                                status_code=status)
        await response(scope, receive, send)


def jsonrpc_problem(body: bytes, in_session: bool = False) -> str | None:
    """Why ``body`` is not one JSON-RPC message the server can answer (None when it is, or when it
    is not JSON at all: the SDK answers that with its parse error). ``in_session``: the request
    names a 2025-11-25 session, which was initialized once already."""
    try:
        message: Any = json.loads(body)
    except ValueError:
        return None
    except RecursionError:
        return TOO_DEEP
    if isinstance(message, list):
        return "Invalid Request: batches are not supported; send one JSON-RPC message per HTTP request"
    if not isinstance(message, dict) or not isinstance(message.get("method"), str):
        return None
    method = message["method"]
    if "id" in message:
        request_id = message["id"]
        if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
            return f"Invalid Request: the id of {method!r} must be a string or an integer"
    elif not method.startswith("notifications/"):
        return f"Invalid Request: {method!r} is a request and needs an id (a string or an integer)"
    if method == "initialize" and in_session:
        return "Invalid Request: this session is initialized already; start a new one without Mcp-Session-Id"
    return None
