"""Bad input, table-driven: each case gets a clear JSON-RPC error (or HTTP status), leaves the task as it
was, and, where it addressed a task, is recorded on the log as a rejection."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest

from ledger.contract.events import RequestRejected, TaskCreated
from ledger.settings import Settings
from tests.support.engine import all_events, history
from tests.support.raw_http import ACCEPT, ModernClient, RawSession, _messages
from tests.support.stack import until

STATE_KEY = "s" * 40
LIMIT = 4_096
ELICITATION_RESPONSE = "io.modelcontextprotocol/elicitation-response"


@dataclass
class Clients:
    url: str
    legacy: RawSession
    modern: ModernClient
    plain: ModernClient  # 2026-07-28 without the tasks extension
    task_id: str
    key: str  # the elicitation the task waits on

    async def raw(self, body: bytes | AsyncIterator[bytes], headers: dict[str, str] | None = None) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(self.url, content=body, headers={
                "Accept": ACCEPT, "Content-Type": "application/json", **(headers or {})})
        try:
            message = _messages(response)[-1]  # a JSON body, or the last event of an SSE stream
        except (ValueError, IndexError):
            message = {}
        return {**message, "status": response.status_code}

    async def loose(self, method: str, params: dict[str, Any], *, legacy: bool = False,
                    literal: str | None = None) -> dict[str, Any]:
        """A request written as a careless client writes it (a client library would refuse): lone
        surrogates as their JSON escapes, NaN as a bare literal, and ``literal`` in place of the
        string "LITERAL" (for numbers like 1e999 that Python cannot write)."""
        if legacy:
            headers = self.legacy_headers()
        else:
            params = {**params, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                          "io.modelcontextprotocol/clientCapabilities": self.modern.capabilities,
                                          "io.modelcontextprotocol/clientInfo": {"name": "loose", "version": "0"}}}
            headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method}
            if "taskId" in params:
                headers["Mcp-Name"] = params["taskId"]
            elif "name" in params:
                headers["Mcp-Name"] = params["name"]
        text = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})  # ensure_ascii, NaN
        if literal is not None:
            text = text.replace('"LITERAL"', literal)
        return await self.raw(text.encode(), headers)

    async def get(self, path: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.get(self.url.removesuffix("/mcp") + path)
        return {"status": response.status_code}

    async def web_answer(self, body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """A POST to the page's answer route, as a browser page (or a forger) would send it."""
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{self.url.removesuffix('/mcp')}/ui/api/tasks/{self.task_id}/answer",
                                       content=body, headers={"Content-Type": "application/json", **(headers or {})})
        return {"status": response.status_code}

    def legacy_headers(self) -> dict[str, str]:
        return {"Mcp-Session-Id": self.legacy.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}

    async def meta_answer(self, answer: Any) -> dict[str, Any]:
        return await self.legacy.call("tasks/get", {"taskId": self.task_id, "_meta": {ELICITATION_RESPONSE: answer}})

    async def update(self, responses: Any) -> dict[str, Any]:
        return await self.modern.call("tasks/update", {"taskId": self.task_id, "inputResponses": responses})


Send = Callable[[Clients], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Case:
    name: str
    send: Send
    code: int | None = None  # the JSON-RPC error code
    http: int | None = None  # the HTTP status, where that is the answer
    acknowledged: bool = False  # answered with a result: ignored, as the spec asks, and changes nothing
    tool_error: bool = False  # a tool's input validation error: a result with isError (the spec's tool errors)
    records: bool = False  # addressed the task: a rejection is on the log
    ends_task: Callable[[Clients], Awaitable[None]] | None = None  # puts the task in a terminal status first


def accept(content: Any) -> dict[str, Any]:
    return {"action": "accept", "content": content}


async def cancel_first(c: Clients) -> None:
    cancelled = await c.legacy.call("tasks/cancel", {"taskId": c.task_id})  # answers once the task is cancelled
    assert cancelled["result"]["status"] == "cancelled", cancelled


async def first_round(c: Clients) -> dict[str, Any]:
    return await c.plain.result("tools/call", {"name": "approve_expense", "arguments": {"amount": 1, "description": "x"}})


async def retry_with(c: Clients, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    first = await first_round(c)
    (key, _), = first["inputRequests"].items()
    params = {"name": "approve_expense", "arguments": {"amount": 1, "description": "x"},
              "requestState": first["requestState"], "inputResponses": {key: accept({"approved": True})}}
    return await c.plain.call("tools/call", change(params))


APPROVE = {"name": "approve_expense", "arguments": {"amount": 3, "description": "pens"}}
DEEP = b"[" * 100_000 + b"]" * 100_000


def deep_answer(c: Clients, depth: int) -> bytes:
    content = '{"approved": true, "note": ' + "[" * depth + "]" * depth + "}"
    return (f'{{"jsonrpc": "2.0", "id": 5, "method": "tasks/get", "params": {{"taskId": "{c.task_id}", "_meta": '
            f'{{"{ELICITATION_RESPONSE}": {{"elicitationId": "{c.key}", "action": "accept", "content": {content}}}}}}}}}'
            ).encode()
UNKNOWN = str(uuid.uuid4())
TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


def without_id(c: Clients) -> dict[str, Any]:
    """A task-augmented tools/call on the 2025-11-25 wire with no id: the SDK would take it for a notification."""
    return {"jsonrpc": "2.0", "method": "tools/call", "params": {**APPROVE, "task": {"ttl": 60_000}}}


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


async def chunks(size: int) -> AsyncIterator[bytes]:
    """A body of ``size`` bytes sent chunked (no Content-Length)."""
    yield b'{"x": "'
    for _ in range(size // 65_536):
        yield b"a" * 65_536
    yield b'"}'

CASES = [
    # the HTTP and JSON-RPC envelope
    Case("malformed JSON, legacy session", lambda c: c.raw(b'{"jsonrpc": "2.0", "id": 1, "method": ', {
        "Mcp-Session-Id": c.legacy.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}), code=-32700),
    Case("malformed JSON, stateless", lambda c: c.raw(b"{not json", {"MCP-Protocol-Version": "2026-07-28"}),
         code=-32700),
    Case("a body that is not a JSON-RPC message", lambda c: c.raw(b'[1, 2, 3]', {"MCP-Protocol-Version": "2026-07-28"}),
         http=400),
    Case("oversize request body", lambda c: c.raw(b'{"x": "' + b"a" * (2 << 20) + b'"}'), http=413),
    Case("oversize request body, chunked", lambda c: c.raw(chunks(10 << 20)), http=413),
    Case("a batch of requests", lambda c: c.raw(json.dumps([TOOLS_LIST, {**TOOLS_LIST, "id": 2}]).encode(),
                                                 c.legacy_headers()), code=-32600, http=400),
    Case("tools/call without an id, legacy", lambda c: c.raw(json.dumps(without_id(c)).encode(), c.legacy_headers()),
         code=-32600, http=400),
    Case("tools/call with an array id", lambda c: c.raw(json.dumps({**without_id(c), "id": []}).encode(),
                                                        c.legacy_headers()), code=-32600, http=400),
    Case("tools/call with an object id", lambda c: c.raw(json.dumps({**without_id(c), "id": {}}).encode(),
                                                         c.legacy_headers()), code=-32600, http=400),
    Case("tools/call without an id, stateless", lambda c: c.raw(json.dumps({
        "jsonrpc": "2.0", "method": "tools/call", "params": APPROVE}).encode(), {"MCP-Protocol-Version": "2026-07-28"}),
         code=-32600),
    Case("unknown method, legacy", lambda c: c.legacy.call("tasks/frobnicate", {}), code=-32601),
    Case("unknown method, stateless", lambda c: c.modern.call("tasks/frobnicate", {}), code=-32601),
    Case("unsupported protocol version", lambda c: c.modern.call("tools/list", headers={
        "MCP-Protocol-Version": "2099-01-01"}), http=400),
    Case("Mcp-Method header that disagrees with the body", lambda c: c.modern.call("tools/list", headers={
        "Mcp-Method": "tools/call"}), code=-32020),
    Case("Mcp-Name header that disagrees with the tool", lambda c: c.modern.call("tools/call", APPROVE, headers={
        "Mcp-Name": "plan_trip"}), code=-32020),
    Case("stateless request without its _meta envelope", lambda c: c.raw(
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}',
        {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}), code=-32602),
    Case("legacy request without a session", lambda c: c.raw(
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}'), http=400),
    # tools/call
    Case("unknown tool, task-augmented", lambda c: c.legacy.call("tools/call", {
        "name": "no_such_tool", "arguments": {}, "task": {}}), code=-32602),
    Case("unknown tool, tasks extension", lambda c: c.modern.call("tools/call", {"name": "no_such_tool", "arguments": {}}),
         code=-32602),
    Case("argument of the wrong type", lambda c: c.legacy.call("tools/call", {
        "name": "approve_expense", "arguments": {"amount": "lots", "description": "x"}, "task": {}}), code=-32602),
    Case("missing required argument", lambda c: c.modern.call("tools/call", {
        "name": "approve_expense", "arguments": {"amount": 3}}), code=-32602),
    Case("argument the tool does not take", lambda c: c.modern.call("tools/call", {
        "name": "approve_expense", "arguments": {"amount": 3, "description": "x", "bribe": True}}), code=-32602),
    Case("arguments that are not an object", lambda c: c.modern.call("tools/call", {
        "name": "approve_expense", "arguments": [3, "x"]}), code=-32602),
    Case("oversize arguments", lambda c: c.modern.call("tools/call", {
        "name": "approve_expense", "arguments": {"amount": 3, "description": "x" * (LIMIT + 1)}}), code=-32602),
    Case("task-augmented call of a read tool", lambda c: c.legacy.call("tools/call", {
        "name": "task_history", "arguments": {"task_id": c.task_id}, "task": {}}), code=-32602),
    # reading tasks
    Case("unknown task id, legacy tasks/get", lambda c: c.legacy.call("tasks/get", {"taskId": UNKNOWN}), code=-32602),
    Case("unknown task id, extension tasks/get", lambda c: c.modern.call("tasks/get", {"taskId": UNKNOWN}), code=-32602),
    Case("tasks/get without taskId", lambda c: c.legacy.call("tasks/get", {}), code=-32602),
    Case("taskId that is not a string", lambda c: c.legacy.call("tasks/get", {"taskId": 42}), code=-32602),
    Case("unknown task id, tasks/result", lambda c: c.legacy.call("tasks/result", {"taskId": UNKNOWN}), code=-32602),
    Case("tasks/list with a forged cursor", lambda c: c.legacy.call("tasks/list", {"cursor": "bm90IGEgY3Vyc29y"}),
         code=-32602),
    Case("tasks/result at 2026-07-28", lambda c: c.modern.call("tasks/result", {"taskId": c.task_id}), code=-32601),
    Case("tasks/update at 2025-11-25", lambda c: c.legacy.call("tasks/update", {
        "taskId": c.task_id, "inputResponses": {}}), code=-32601),
    Case("extension method from a client without the extension", lambda c: c.plain.call("tasks/get", {
        "taskId": c.task_id}), code=-32021),
    # answers through tasks/get _meta (2025-11-25)
    Case("answer to an unknown elicitation", lambda c: c.meta_answer({"elicitationId": "nope", **accept(
        {"approved": True})}), code=-32602, records=True),
    Case("answer that violates the schema", lambda c: c.meta_answer({"elicitationId": c.key, **accept(
        {"approved": "yes"})}), code=-32602, records=True),
    Case("answer missing a required field", lambda c: c.meta_answer({"elicitationId": c.key, **accept(
        {"note": "hm"})}), code=-32602, records=True),
    Case("answer with an unknown action", lambda c: c.meta_answer({"elicitationId": c.key, "action": "maybe"}),
         code=-32602, records=True),
    Case("answer that is not an object", lambda c: c.meta_answer("yes please"), code=-32602),
    Case("oversize answer", lambda c: c.meta_answer({"elicitationId": c.key, **accept(
        {"approved": True, "note": "n" * (LIMIT + 1)})}), code=-32602, records=True),
    Case("answer after cancel", lambda c: c.meta_answer({"elicitationId": c.key, **accept({"approved": True})}),
         code=-32602, records=True, ends_task=cancel_first),
    # answers through tasks/update (2026-07-28)
    # SEP-2663: answers to keys that are not outstanding are ignored (and recorded once), not refused
    Case("inputResponses for an unknown key", lambda c: c.update({"nope": accept({"approved": True})}),
         acknowledged=True, records=True),
    Case("inputResponses that violate the schema", lambda c: c.update({c.key: accept({"approved": 1})}),
         code=-32602, records=True),
    Case("inputResponses that are not an object", lambda c: c.update(["yes"]), code=-32602),
    Case("inputResponses entry without an action", lambda c: c.update({c.key: {"content": {"approved": True}}}),
         code=-32602),
    Case("tasks/update of an unknown task", lambda c: c.modern.call("tasks/update", {
        "taskId": UNKNOWN, "inputResponses": {}}), code=-32602),
    Case("tasks/update after cancel", lambda c: c.update({c.key: accept({"approved": True})}),
         acknowledged=True, records=True, ends_task=cancel_first),
    # cancelling
    Case("cancel of a terminal task, legacy", lambda c: c.legacy.call("tasks/cancel", {"taskId": c.task_id}),
         code=-32602, records=True, ends_task=cancel_first),
    Case("cancel of an unknown task", lambda c: c.legacy.call("tasks/cancel", {"taskId": UNKNOWN}), code=-32602),
    # multi round-trip requests
    Case("tampered requestState", lambda c: retry_with(c, lambda p: {
        **p, "requestState": p["requestState"][:-6] + "AAAAAA"}), code=-32602),
    Case("requestState presented for other arguments", lambda c: retry_with(c, lambda p: {
        **p, "arguments": {"amount": 1000, "description": "x"}}), code=-32602),
    Case("requestState presented for another tool", lambda c: retry_with(c, lambda p: {
        **p, "name": "plan_trip", "arguments": {"destination": "x"}}), code=-32602),
    Case("requestState that is not a string", lambda c: retry_with(c, lambda p: {**p, "requestState": 7}),
         code=-32602),
    Case("retry answering a key that was not asked", lambda c: retry_with(c, lambda p: {
        **p, "inputResponses": {"nope": accept({"approved": True})}}), code=-32602),
    # values that are not JSON, or not text
    Case("lone surrogate in arguments", lambda c: c.loose("tools/call", {"name": "approve_expense", "arguments": {
        "amount": 1, "description": "\ud800x"}}), code=-32602),
    Case("lone surrogate in answer content", lambda c: c.loose("tasks/update", {"taskId": c.task_id, "inputResponses": {
        c.key: accept({"approved": True, "note": "\ud800x"})}}), code=-32602, records=True),
    Case("lone surrogate in an inputResponses key", lambda c: c.loose("tasks/update", {
        "taskId": c.task_id, "inputResponses": {"\ud800x": accept({"approved": True})}}), acknowledged=True,
         records=True),
    Case("amount as the string NaN", lambda c: c.modern.call("tools/call", {"name": "approve_expense", "arguments": {
        "amount": "NaN", "description": "x"}}), code=-32602),
    Case("amount as the string Infinity", lambda c: c.modern.call("tools/call", {"name": "approve_expense",
         "arguments": {"amount": "Infinity", "description": "x"}}), code=-32602),
    Case("amount 1e999", lambda c: c.loose("tools/call", {"name": "approve_expense", "arguments": {
        "amount": "LITERAL", "description": "x"}}, literal="1e999"), code=-32602),
    Case("amount as a bare NaN literal", lambda c: c.loose("tools/call", {"name": "approve_expense", "arguments": {
        "amount": float("nan"), "description": "x"}}), code=-32602),
    Case("amount true", lambda c: c.modern.call("tools/call", {"name": "approve_expense", "arguments": {
        "amount": True, "description": "x"}}), code=-32602),
    Case("an integer as a string", lambda c: c.modern.call("tools/call", {"name": "count_slowly", "arguments": {
        "n": "3"}}), code=-32602),
    Case("an integer as 1e308", lambda c: c.modern.call("tools/call", {"name": "count_slowly", "arguments": {
        "n": 1e308}}), code=-32602),
    Case("amount 10**400", lambda c: c.modern.call("tools/call", {"name": "approve_expense", "arguments": {
        "amount": 10**400, "description": "x"}}), code=-32602),
    Case("NaN in answer content", lambda c: c.loose("tasks/update", {"taskId": c.task_id, "inputResponses": {
        c.key: accept({"approved": True, "note": float("nan")})}}), code=-32602, records=True),
    Case("task.ttl 1e20, legacy", lambda c: c.loose("tools/call", {**APPROVE, "task": {"ttl": 1e20}}, legacy=True),
         code=-32602),
    Case("task.ttl 2^63, legacy", lambda c: c.legacy.call("tools/call", {**APPROVE, "task": {"ttl": 2**63}}),
         code=-32602),
    Case("task.ttl -1, legacy", lambda c: c.legacy.call("tools/call", {**APPROVE, "task": {"ttl": -1}}),
         code=-32602),
    Case("a cursor of 50,000 nested brackets", lambda c: c.legacy.call("tasks/list", {"cursor": b64("[" * 50_000)}),
         code=-32602),
    Case("a cursor past a 64-bit integer", lambda c: c.legacy.call("tasks/list", {
        "cursor": b64('[9223372036854775808,"x"]')}), code=-32602),
    Case("a cursor past a 64-bit integer, list_tasks", lambda c: c.legacy.call("tools/call", {
        "name": "list_tasks", "arguments": {"cursor": b64('[9223372036854775808,"x"]')}}), tool_error=True),
    Case("a cursor past a 64-bit integer, web", lambda c: c.get(
        "/ui/api/tasks?cursor=" + b64('[9223372036854775808,"x"]')), http=400),
    Case("older_than_seconds 1e308", lambda c: c.legacy.call("tools/call", {
        "name": "pending_elicitations", "arguments": {"older_than_seconds": 1e308}}), tool_error=True),
    Case("a second initialize in a session", lambda c: c.raw(json.dumps({
        "jsonrpc": "2.0", "id": 9, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "again", "version": "0"}}}
    ).encode(), c.legacy_headers()), code=-32600),
    # nesting and sizes a parser or the log cannot take
    Case("a body nested 100,000 deep, stateless", lambda c: c.raw(DEEP, {"MCP-Protocol-Version": "2026-07-28"}),
         http=400),
    Case("a body nested 100,000 deep, legacy session", lambda c: c.raw(DEEP, c.legacy_headers()), http=400),
    Case("answer content nested 5,000 deep", lambda c: c.raw(deep_answer(c, 5_000), c.legacy_headers()), http=400),
    Case("answer to an unknown elicitation id of 600,000 characters", lambda c: c.meta_answer({
        "elicitationId": "x" * 600_000, **accept({"approved": True})}), code=-32602, records=True),
    # answers from the web page
    Case("web answer with an integer elicitationId", lambda c: c.web_answer(json.dumps({
        "elicitationId": 5, **accept({"approved": True})}).encode()), http=400),
    Case("web answer with a list elicitationId", lambda c: c.web_answer(json.dumps({
        "elicitationId": [c.key], **accept({"approved": True})}).encode()), http=400),
    Case("web answer nested 100,000 deep", lambda c: c.web_answer(DEEP), http=400),
    Case("web answer sent as text/plain", lambda c: c.web_answer(json.dumps({
        "elicitationId": c.key, **accept({"approved": True})}).encode(), {"Content-Type": "text/plain"}), http=400),
    Case("web answer from a page on another port", lambda c: c.web_answer(json.dumps({
        "elicitationId": c.key, **accept({"approved": True})}).encode(), {"Origin": "http://127.0.0.1:5555"}),
         http=403),
    # the read side
    Case("resource that does not exist", lambda c: c.legacy.call("resources/read", {"uri": "ledger://tasks/none"}),
         code=-32002),
    Case("resource outside ledger://", lambda c: c.legacy.call("resources/read", {"uri": "file:///etc/passwd"}),
         code=-32002),
]


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, Any]:
    return {"request_state_key": STATE_KEY, "round_wait_ms": 3_000, "max_input_bytes": LIMIT}


@pytest.fixture
async def clients(stack: tuple[str, Settings]) -> AsyncIterator[Clients]:
    url, _ = stack
    async with RawSession(url) as legacy, ModernClient(url) as modern, ModernClient(url, tasks=False) as plain:
        task_id = (await modern.result("tools/call", APPROVE))["taskId"]

        async def waiting() -> dict[str, Any] | None:
            task = await modern.result("tasks/get", {"taskId": task_id})
            return task if task["status"] == "input_required" else None

        key = next(iter((await until(waiting))["inputRequests"]))
        yield Clients(url, legacy, modern, plain, task_id, key)


def test_the_table_has_at_least_forty_cases() -> None:
    assert len(CASES) >= 40 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_bad_input_is_refused_clearly_and_changes_nothing(stack: tuple[str, Settings], clients: Clients,
                                                               case: Case) -> None:
    _, settings = stack
    if case.ends_task is not None:
        await case.ends_task(clients)
    before = await clients.modern.result("tasks/get", {"taskId": clients.task_id})
    rejections = sum(isinstance(e, RequestRejected) for e in await history(settings, clients.task_id))

    response = await case.send(clients)

    if case.code is not None:
        assert "error" in response, response
        assert response["error"]["code"] == case.code, response
        assert response["error"]["message"].strip(), response
    if case.http is not None:
        assert response["status"] == case.http, response
    if case.acknowledged:
        assert "result" in response, response
    if case.tool_error:
        assert response["result"]["isError"] is True and response["result"]["content"][0]["text"], response
    after = await clients.modern.result("tasks/get", {"taskId": clients.task_id})
    assert (after["status"], after.get("inputRequests")) == (before["status"], before.get("inputRequests"))
    recorded = sum(isinstance(e, RequestRejected) for e in await history(settings, clients.task_id)) - rejections
    assert recorded == (1 if case.records else 0)


async def test_a_request_without_a_usable_id_starts_no_work(stack: tuple[str, Settings], clients: Clients) -> None:
    _, settings = stack
    created = sum(isinstance(e, TaskCreated) for e in await all_events(settings))
    for request_id in (None, [], {}, True, 1.5):
        message = without_id(clients) if request_id is None else {**without_id(clients), "id": request_id}
        response = await clients.raw(json.dumps(message).encode(), clients.legacy_headers())
        assert response["error"]["code"] == -32600, (request_id, response)
    await asyncio.sleep(1)  # a negative check: a task the server started anyway would be on the log by now
    assert sum(isinstance(e, TaskCreated) for e in await all_events(settings)) == created


async def test_a_refusal_keeps_a_bounded_copy_of_what_it_refuses(stack: tuple[str, Settings], clients: Clients) -> None:
    # A 600,000-character id was copied whole, twice, into the refusal: past the broker's record size,
    # which reached the client as error code 0.
    _, settings = stack
    response = await clients.meta_answer({"elicitationId": "x" * 600_000, **accept({"approved": True})})
    assert response["error"]["code"] == -32602 and len(response["error"]["message"]) < 1_000, response
    refused = [e for e in await history(settings, clients.task_id) if isinstance(e, RequestRejected)][-1]
    assert len(refused.elicitation_id) < 300 and len(refused.reason) < 600, (len(refused.elicitation_id),
                                                                             len(refused.reason))
