"""People in the loop at the terminal: ``ledger call`` runs a tool as a task and asks its questions at
the prompt; ``ledger answer`` lists or answers the questions a server's tasks wait on.

Both are MCP clients on the wire: stateless MCP 2026-07-28 requests with the tasks extension
(``tools/call`` → ``tasks/get`` → ``tasks/update``), so they work against any ledger server, and
with ``--token`` (or ``LEDGER_TOKEN``) as the principal that token names, or, against a server that
names an OAuth issuer, as the person who signs in there (``signin.py``). Each question's
``requestedSchema`` becomes one prompt per field (booleans as y/n, dates, numbers with their bounds,
enums by number, defaults in brackets, optional fields skipped with Enter), validated before it is
sent; the server validates it again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import httpx2 as httpx

from ledger.contract.elicitation import ANSWER_BY
from projections.status import TIMED_OUT

if TYPE_CHECKING:  # the MCP SDK's OAuth client costs 0.6 s to import: ``ledger call`` loads it, ``ledger replay`` not
    from ledger.cli.signin import SignIn

PROTOCOL = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
TERMINAL = ("completed", "failed", "cancelled")
POLL_S = 0.3

Ask = Callable[[str], str]


class ClientError(RuntimeError):
    """The server could not be reached, or refused a request; the message says which and why."""


class TaskClient:
    """Requests to one server, as the token's principal, or as the person ``sign_in`` signs in when the
    server asks for one (and no token was given)."""

    def __init__(self, url: str, token: str | None = None, sign_in: SignIn | None = None) -> None:
        self.url = url
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {token}"} if token else {})
        self._sign_in = None if token else sign_in
        self._sign_in_kept = self._sign_in is not None and self._sign_in.kept_for(url)
        self._sign_in_errors = self._sign_in.errors if self._sign_in is not None else ()

    async def close(self) -> None:
        await self._http.aclose()
        if self._sign_in is not None:
            await self._sign_in.close()

    async def request(self, method: str, params: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        """The result of one request, or ``ClientError`` with the server's message."""
        params = {**params, "_meta": {
            "io.modelcontextprotocol/protocolVersion": PROTOCOL,
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}, "extensions": {TASKS: {}}},
            "io.modelcontextprotocol/clientInfo": {"name": "ledger-terminal", "version": "1"},
        }}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
                   "MCP-Protocol-Version": PROTOCOL, "Mcp-Method": method}
        if name is not None:
            headers["Mcp-Name"] = name
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        if self._sign_in_kept:
            self._sign_in_kept = False
            self._http.auth = await self._sign_in.auth(self.url)
        response = await self._post(body, headers)
        if response.status_code == 401 and self._http.auth is None and self._sign_in is not None \
                and "resource_metadata=" in response.headers.get("www-authenticate", ""):
            self._http.auth = await self._sign_in.auth(self.url)
            response = await self._post(body, headers)
        if response.status_code == 401:
            raise ClientError(f"{self.url} refused the signed-in person's token" if self._http.auth is not None
                              else f"{self.url} wants a bearer token: pass --token or set LEDGER_TOKEN")
        if response.status_code == 403:
            raise ClientError(f"{self.url} refused: {response.headers.get('www-authenticate') or 'forbidden'}")
        message = _last_message(response)
        if message is None:
            raise ClientError(f"{self.url} did not answer as an MCP server (HTTP {response.status_code})")
        if "error" in message:
            raise ClientError(message["error"].get("message", "the server refused the request"))
        return message["result"]

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._http.post(self.url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach {self.url}: {exc or type(exc).__name__}") from None
        except self._sign_in_errors as exc:
            raise ClientError(f"signing in for {self.url} failed: {exc}") from None


async def call(client: TaskClient, tool: str, arguments: dict[str, Any], ask: Ask = input,
               say: Callable[[str], None] = print) -> int:
    """Run ``tool`` as a task, asking its questions at the prompt; 0 when it completed without error."""
    created = await client.request("tools/call", {"name": tool, "arguments": arguments}, name=tool)
    if created.get("resultType") != "task":
        say(_text(created))
        return 1 if created.get("isError") else 0
    task_id = created["taskId"]
    say(f"task {task_id} ({tool})")
    return await follow(client, task_id, ask, say)


async def follow(client: TaskClient, task_id: str, ask: Ask, say: Callable[[str], None]) -> int:
    """Poll the task to its end, printing progress and answering questions at the prompt."""
    shown = None
    while True:
        task = await client.request("tasks/get", {"taskId": task_id}, name=task_id)
        status = task["status"]
        if status == "input_required":
            await answer_requests(client, task_id, task.get("inputRequests") or {}, ask, say)
            continue
        if status in TERMINAL:
            return _ended(task, say)
        message = task.get("statusMessage")
        if message and message != shown:
            say(f"  {message}")
            shown = message
        await asyncio.sleep(POLL_S)


async def answer_requests(client: TaskClient, task_id: str, requests: dict[str, Any], ask: Ask,
                          say: Callable[[str], None]) -> None:
    """Ask each question at the prompt and send the answers; an answer to a question someone answered
    meanwhile (the inbox, another terminal) is not sent, or not taken, and the person is told so."""
    responses = {}
    for key, request in requests.items():
        params = request.get("params", {})
        say(f"? {params.get('message', 'The task asks for input.')}")
        if answer_by := (params.get("_meta") or {}).get(ANSWER_BY):
            say(f"  answer by {_when(answer_by)}, or the task goes on without an answer")
        responses[key] = prompt_answer(params.get("requestedSchema") or {"type": "object", "properties": {}}, ask,
                                       say)
    still_asked = (await client.request("tasks/get", {"taskId": task_id}, name=task_id)).get("inputRequests") or {}
    sending = {key: response for key, response in responses.items() if key in still_asked}
    if sending:
        await client.request("tasks/update", {"taskId": task_id, "inputResponses": sending}, name=task_id)
    taken = await _answers_taken(client, task_id)  # what the log kept: another answer may have come first
    for key, response in responses.items():
        answer = taken.get(key)
        if answer is None and key not in sending:
            say("  not sent: the question is no longer waiting for an answer")
        elif answer is not None and answer.get("kind") == TIMED_OUT:
            say(f"  your answer was {'not taken' if key in sending else 'not sent'}: the question timed out at "
                f"{_stamp(answer['occurredAt'])} with no answer, and the task went on without one")
        elif answer is not None and not _same_answer(answer, response):
            say(f"  your answer was {'not taken' if key in sending else 'not sent'}: the question was answered "
                f"elsewhere meanwhile, by {answer.get('principal') or 'an anonymous client'} through "
                f"{answer.get('protocol') or 'another path'} at {_stamp(answer['occurredAt'])}: "
                f"{answer.get('summary')}")


def _stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when(iso_time: str) -> str:
    """An ISO time from the server as the prompt shows times; as sent when it is not one."""
    try:
        return _stamp(int(datetime.fromisoformat(iso_time).timestamp() * 1000))
    except ValueError:
        return iso_time


async def _answers_taken(client: TaskClient, task_id: str) -> dict[str, dict[str, Any]]:
    """The answers the task took, by elicitation id, as its history (the read tool) tells them."""
    try:
        result = await client.request("tools/call", {"name": "task_history", "arguments": {"task_id": task_id}},
                                      name="task_history")
    except ClientError:
        return {}
    entries = (result.get("structuredContent") or {}).get("history", [])
    return {entry["elicitationId"]: entry for entry in entries if entry.get("kind") in ("answered", TIMED_OUT)}


def _same_answer(entry: dict[str, Any], response: dict[str, Any]) -> bool:
    detail = entry.get("detail") or {}
    content = json.loads(detail["content_json"]) if detail.get("content_json") else None
    return detail.get("action") == response["action"] and content == response.get("content")


def prompt_answer(schema: dict[str, Any], ask: Ask, say: Callable[[str], None]) -> dict[str, Any]:
    """accept (with content asked field by field), decline or cancel, as an elicitation result."""
    while True:
        action = ask("  accept, decline or cancel? [a/d/c, Enter: accept] ").strip().lower() or "a"
        if action in ("a", "accept"):
            break
        if action in ("d", "decline"):
            return {"action": "decline"}
        if action in ("c", "cancel"):
            return {"action": "cancel"}
        say("  type a, d or c")
    content: dict[str, Any] = {}
    required = set(schema.get("required", ()))
    for field, spec in schema.get("properties", {}).items():
        value = prompt_field(field, spec, field in required, ask, say)
        if value is not None:
            content[field] = value
    return {"action": "accept", "content": content}


def prompt_field(field: str, spec: dict[str, Any], required: bool, ask: Ask, say: Callable[[str], None]) -> Any:
    """One field's value, asked until it is valid (None: an optional field left empty)."""
    label = spec.get("title") or field
    hint = _hint(spec)
    default = spec.get("default")
    while True:
        shown_default = f", Enter: {json.dumps(default)}" if default is not None else ("" if required else
                                                                                        ", Enter: skip")
        raw = ask(f"  {label}{' (' + spec['description'] + ')' if spec.get('description') else ''} "
                  f"[{hint}{shown_default}] ").strip()
        if raw == "":
            if default is not None:
                return default
            if not required:
                return None
            say(f"  {label} is required")
            continue
        value, problem = parse_value(raw, spec)
        if problem is None:
            return value
        say(f"  {problem}")


def _hint(spec: dict[str, Any]) -> str:
    if "enum" in spec or "oneOf" in spec:
        titles = spec.get("enumNames") or [option.get("title", option["const"]) for option in spec.get("oneOf", [])] \
            or spec["enum"]
        return ", ".join(f"{number}: {title}" for number, title in enumerate(titles, 1))
    kind = spec.get("type")
    if kind == "boolean":
        return "y/n"
    if kind in ("integer", "number"):
        bounds = f" {spec.get('minimum', '')}..{spec.get('maximum', '')}" if "minimum" in spec or "maximum" in spec \
            else ""
        return f"{kind}{bounds}"
    return {"date": "YYYY-MM-DD", "email": "email", "uri": "URL"}.get(spec.get("format", ""), "text")


def parse_value(raw: str, spec: dict[str, Any]) -> tuple[Any, str | None]:
    """The typed value of ``raw`` for a field of ``spec``, or why it is not one."""
    if "enum" in spec or "oneOf" in spec:
        options = spec.get("enum") or [option["const"] for option in spec["oneOf"]]
        if raw.isdigit() and 1 <= int(raw) <= len(options):
            return options[int(raw) - 1], None
        return (raw, None) if raw in options else (None, f"choose one of 1-{len(options)}")
    kind = spec.get("type")
    if kind == "boolean":
        if raw.lower() in ("y", "yes", "true"):
            return True, None
        if raw.lower() in ("n", "no", "false"):
            return False, None
        return None, "answer y or n"
    if kind in ("integer", "number"):
        try:
            value: int | float = int(raw) if kind == "integer" else float(raw)
        except ValueError:
            return None, f"a{'n integer' if kind == 'integer' else ' number'} is needed"
        if "minimum" in spec and value < spec["minimum"] or "maximum" in spec and value > spec["maximum"]:
            return None, f"between {spec.get('minimum', '-∞')} and {spec.get('maximum', '∞')}, please"
        return value, None
    if spec.get("format") == "date":
        try:
            date.fromisoformat(raw)
        except ValueError:
            return None, "a date as YYYY-MM-DD is needed"
    length = len(raw)
    if length < spec.get("minLength", 0) or length > spec.get("maxLength", length):
        return None, f"between {spec.get('minLength', 0)} and {spec.get('maxLength', '∞')} characters, please"
    return raw, None


async def pending(client: TaskClient) -> list[dict[str, Any]]:
    """The questions the caller's tasks wait on, the ones it may answer (the read tool
    ``pending_elicitations``; an auditor's own, not everyone's it may read)."""
    result = await client.request("tools/call", {"name": "pending_elicitations", "arguments": {"answerable": True}},
                                  name="pending_elicitations")
    if result.get("isError"):
        raise ClientError(_text(result))
    return result["structuredContent"]["pendingElicitations"]


async def answer(client: TaskClient, task_id: str | None, ask: Ask = input, say: Callable[[str], None] = print) -> int:
    """Answer a task's questions (or list what waits, and answer the one chosen), then follow it."""
    if task_id is None:
        waiting = await pending(client)
        if not waiting:
            say("no questions are waiting")
            return 0
        for number, question in enumerate(waiting, 1):
            due = f", answer by {_when(question['answerBy'])}" if question.get("answerBy") else ""
            say(f"{number}. {question['taskId']}  {question['tool']}  {question['message']}  "
                f"(asked {question.get('requestedAt', '?')}{due})")
        chosen = ask(f"answer which? [1-{len(waiting)}, Enter: 1] ").strip() or "1"
        if not chosen.isdigit() or not 1 <= int(chosen) <= len(waiting):
            raise ClientError(f"{chosen!r} is not one of 1-{len(waiting)}")
        task_id = waiting[int(chosen) - 1]["taskId"]
    task = await client.request("tasks/get", {"taskId": task_id}, name=task_id)
    if task["status"] != "input_required":
        say(f"task {task_id} is {task['status']}: nothing to answer")
        return 0
    return await follow(client, task_id, ask, say)


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that reads as JSON (20, true, [1,2]) is that JSON, else a string."""
    arguments: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ClientError(f"arguments are key=value, got {pair!r}")
        try:
            arguments[key] = json.loads(value)
        except ValueError:
            arguments[key] = value
    return arguments


def _ended(task: dict[str, Any], say: Callable[[str], None]) -> int:
    if task["status"] == "completed":
        result = task.get("result") or {}
        say(_text(result))
        return 1 if result.get("isError") else 0
    say(f"{task['status']}: {task.get('statusMessage') or (task.get('error') or {}).get('message', '')}")
    return 1


def _text(result: dict[str, Any]) -> str:
    return "\n".join(part.get("text", "") for part in result.get("content", []) if part.get("type") == "text")


def _last_message(response: httpx.Response) -> dict[str, Any] | None:
    try:
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")
                  and line[5:].strip()]
    except ValueError:
        return None
    return events[-1] if events else None
