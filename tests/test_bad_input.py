"""Bad input, table-driven: each case gets a clear JSON-RPC error (or HTTP status), leaves the task as it
was, and, where it addressed a task, is recorded on the log as a rejection."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx
import pytest

from ledger.events import RequestRejected
from ledger.settings import Settings
from tests.engine import history
from tests.raw_http import ACCEPT, ModernClient, RawSession
from tests.stack import demo_stack, until

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

    async def raw(self, body: bytes, headers: dict[str, str] | None = None) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(self.url, content=body, headers={
                "Accept": ACCEPT, "Content-Type": "application/json", **(headers or {})})
        try:
            message = response.json()
        except ValueError:
            message = {}
        return {**message, "status": response.status_code}

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
    records: bool = False  # addressed the task: a rejection is on the log
    ends_task: Callable[[Clients], Awaitable[None]] | None = None  # puts the task in a terminal status first


def accept(content: Any) -> dict[str, Any]:
    return {"action": "accept", "content": content}


async def cancel_first(c: Clients) -> None:
    await c.modern.result("tasks/cancel", {"taskId": c.task_id})


async def first_round(c: Clients) -> dict[str, Any]:
    return await c.plain.result("tools/call", {"name": "approve_expense", "arguments": {"amount": 1, "description": "x"}})


async def retry_with(c: Clients, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    first = await first_round(c)
    (key, _), = first["inputRequests"].items()
    params = {"name": "approve_expense", "arguments": {"amount": 1, "description": "x"},
              "requestState": first["requestState"], "inputResponses": {key: accept({"approved": True})}}
    return await c.plain.call("tools/call", change(params))


APPROVE = {"name": "approve_expense", "arguments": {"amount": 3, "description": "pens"}}
UNKNOWN = str(uuid.uuid4())

CASES = [
    # the HTTP and JSON-RPC envelope
    Case("malformed JSON, legacy session", lambda c: c.raw(b'{"jsonrpc": "2.0", "id": 1, "method": ', {
        "Mcp-Session-Id": c.legacy.headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-11-25"}), code=-32700),
    Case("malformed JSON, stateless", lambda c: c.raw(b"{not json", {"MCP-Protocol-Version": "2026-07-28"}),
         code=-32700),
    Case("a body that is not a JSON-RPC message", lambda c: c.raw(b'[1, 2, 3]', {"MCP-Protocol-Version": "2026-07-28"}),
         http=400),
    Case("oversize request body", lambda c: c.raw(b'{"x": "' + b"a" * (2 << 20) + b'"}'), http=413),
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
    Case("inputResponses for an unknown key", lambda c: c.update({"nope": accept({"approved": True})}),
         code=-32602, records=True),
    Case("inputResponses that violate the schema", lambda c: c.update({c.key: accept({"approved": 1})}),
         code=-32602, records=True),
    Case("inputResponses that are not an object", lambda c: c.update(["yes"]), code=-32602),
    Case("inputResponses entry without an action", lambda c: c.update({c.key: {"content": {"approved": True}}}),
         code=-32602),
    Case("tasks/update of an unknown task", lambda c: c.modern.call("tasks/update", {
        "taskId": UNKNOWN, "inputResponses": {}}), code=-32602),
    Case("tasks/update after cancel", lambda c: c.update({c.key: accept({"approved": True})}),
         code=-32602, records=True, ends_task=cancel_first),
    # cancelling
    Case("cancel of a terminal task, legacy", lambda c: c.legacy.call("tasks/cancel", {"taskId": c.task_id}),
         code=-32602, records=True, ends_task=cancel_first),
    Case("cancel of a terminal task, extension", lambda c: c.modern.call("tasks/cancel", {"taskId": c.task_id}),
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
    # the read side
    Case("resource that does not exist", lambda c: c.legacy.call("resources/read", {"uri": "ledger://tasks/none"}),
         code=-32002),
    Case("resource outside ledger://", lambda c: c.legacy.call("resources/read", {"uri": "file:///etc/passwd"}),
         code=-32002),
]


@pytest.fixture(scope="module")
async def stack(bootstrap: str) -> AsyncIterator[tuple[str, Settings]]:
    async with demo_stack(bootstrap, request_state_key=STATE_KEY, round_wait_ms=3_000,
                          max_input_bytes=LIMIT) as stack:
        yield stack


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
    after = await clients.modern.result("tasks/get", {"taskId": clients.task_id})
    assert (after["status"], after.get("inputRequests")) == (before["status"], before.get("inputRequests"))
    recorded = sum(isinstance(e, RequestRejected) for e in await history(settings, clients.task_id)) - rejections
    assert recorded == (1 if case.records else 0)
