"""MCP 2025-11-25 tasks, served from the ledger: the adapter every MCP request of a server goes through.

The adapter turns MCP requests into ``TaskService`` calls and task rows into MCP results; requests of
2026-07-28 go on to ``ledger.mcp.extension_tasks``. On 2025-11-25 it serves both seed patterns:

* relay (fastmcp PR 3136): while a client waits on ``tasks/result`` (or a plain ``tools/call``),
  each elicitation the task asks is sent to it as ``elicitation/create`` carrying the
  related-task ``_meta``, and its answer becomes a response event;
* non-blocking ``_meta`` (MCP issue 1869): task results carry the pending elicitations, and a
  client answers inside ``tasks/get`` ``_meta``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import Field

from ledger.contract.events import ProgressReported, TaskEvent
from ledger.engine.app import App, UnknownTool, error_result
from ledger.mcp import extension_tasks
from ledger.mcp.extension_tasks import ModernAdapter
from ledger.mcp.read_tools import (
    HISTORY_URI,
    READ_TOOLS,
    TASK_URI,
    call_read_tool,
    read_resource,
    read_tool_definitions,
)
from ledger.mcp.wire import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    create_task,
    deadline_meta,
    principal_of,
    service_errors,
    task_fields,
    tool_call_result,
)
from ledger.service.errors import Refused, TaskNotFound
from ledger.service.live_view import LiveView
from ledger.service.queries import ReadSide
from ledger.service.tasks import TaskService, awaits_client
from projections.status import PendingElicitation, TaskRow

log = logging.getLogger(__name__)

PROTOCOL = "2025-11-25"
RELATED_TASK = "io.modelcontextprotocol/related-task"
PENDING_ELICITATIONS = "io.modelcontextprotocol/pending-elicitations"
ELICITATION_RESPONSE = "io.modelcontextprotocol/elicitation-response"
IMMEDIATE_RESPONSE = "io.modelcontextprotocol/model-immediate-response"

TOOLS_CACHE_MS = 60_000
RESOURCE_NOT_FOUND = -32002
MAX_STATUS_SUBSCRIBERS = 10_000
MAX_NOTIFICATIONS_IN_FLIGHT = 1_000


class Creator:
    """The 2025-11-25 session that created a task, and what it is told of the task."""

    __slots__ = ("session", "status", "progress_token", "request_id", "progress")

    def __init__(self, session: Any, status: bool, progress_token: str | int | None, request_id: Any) -> None:
        self.session = session
        self.status = status
        self.progress_token = progress_token
        self.request_id = request_id
        self.progress = -math.inf


class TaskParams(types.RequestParams):
    task_id: str = Field(alias="taskId", min_length=1)


def task_status(row: TaskRow) -> str:
    # 2025-11-25: a tool result with isError means the task failed.
    return "failed" if row.status == "completed" and row.is_error else row.status


def task_json(row: TaskRow) -> dict[str, Any]:
    return task_fields(row, status=task_status(row), ttl="ttl", poll_interval="pollInterval")


def pending_json(pending: PendingElicitation) -> dict[str, Any]:
    return {
        "elicitationId": pending.elicitation_id,
        "mode": pending.mode,
        "message": pending.message,
        "requestedSchema": json.loads(pending.requested_schema_json),
        **({"_meta": meta} if (meta := deadline_meta(pending)) else {}),
    }


def with_pending(result: dict[str, Any], row: TaskRow) -> dict[str, Any]:
    """Pattern B: a waiting task's results list what it waits for in ``_meta``."""
    if row.pending and not row.terminal:
        result["_meta"] = {PENDING_ELICITATIONS: [pending_json(p) for p in row.pending]}
    return result


def is_modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def legacy_only(ctx: ServerRequestContext[Any, Any], method: str, instead: str) -> None:
    if is_modern(ctx):
        raise MCPError(METHOD_NOT_FOUND, f"{method} was removed in {ctx.protocol_version}: {instead}")


def client_can_elicit(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return capabilities is not None and capabilities.elicitation is not None


class Adapter:
    """MCP 2025-11-25 requests in, task service calls out."""

    def __init__(self, app: App, service: TaskService, view: LiveView, modern_adapter: ModernAdapter,
                 read_side: ReadSide) -> None:
        self.app = app
        self.service = service
        self.view = view
        self.modern = modern_adapter
        self.read_side = read_side
        self.read_tools = [name for name in READ_TOOLS if name not in app.tools]
        # The read tools' JSON schemas are built once, not on every tools/list.
        self._read_tool_definitions = [d for d in read_tool_definitions() if d["name"] in self.read_tools]
        if len(self.read_tools) < len(READ_TOOLS):
            log.warning("the application defines %s; ledger's read tools of the same names are not served",
                        ", ".join(sorted(set(READ_TOOLS) - set(self.read_tools))))
        self._creators: OrderedDict[str, Creator] = OrderedDict()  # in the order followed
        self._notifying: set[asyncio.Task[None]] = set()
        view.listen(self._notify_status)
        view.listen_events(self._notify_progress)

    def _follow(self, ctx: ServerRequestContext[Any, Any], task_id: str, *, status: bool) -> None:
        """Tell the session that created ``task_id`` of its changes: with ``status`` its status (a
        task-augmented call), and its progress when the request carried a progress token. The oldest
        followed task is forgotten beyond ``MAX_STATUS_SUBSCRIBERS`` (tasks that wait for days)."""
        token = ctx.meta.get("progress_token") if ctx.meta else None
        row = self.view.get(task_id)
        if (not status and token is None) or row is None or row.terminal:
            return  # nothing to tell, or the view already applied its end (which removes the entry)
        # A task-augmented call has returned by the time progress comes: its token's notifications go
        # on the session's GET stream; a plain call's on the stream of the request, which waits.
        self._creators[task_id] = Creator(ctx.session, status, token, None if status else ctx.request_id)
        if len(self._creators) > MAX_STATUS_SUBSCRIBERS:
            self._creators.popitem(last=False)

    def _notify_status(self, before: TaskRow | None, after: TaskRow | None) -> None:
        """Send ``notifications/tasks/status`` to the session that created the task (best effort)."""
        if after is None or before is None or after.task_id not in self._creators:
            return
        creator = self._creators[after.task_id]
        if after.terminal:
            del self._creators[after.task_id]
        if not creator.status or (task_status(before), before.status_message) == (task_status(after),
                                                                                   after.status_message):
            return
        notification = types.TaskStatusNotification(
            params=types.TaskStatusNotificationParams.model_validate(task_json(after), by_name=False))
        self._send(creator.session.send_notification(notification))

    def _notify_progress(self, event: TaskEvent) -> None:
        """Send ``notifications/progress`` with the creating request's token; progress only grows (a
        re-run that reports less than was already sent is not passed on)."""
        if not isinstance(event, ProgressReported):
            return
        creator = self._creators.get(event.task_id)
        if creator is None or creator.progress_token is None or event.progress <= creator.progress:
            return
        creator.progress = event.progress
        self._send(creator.session.send_progress_notification(
            creator.progress_token, event.progress, event.total, event.message,
            related_request_id=creator.request_id))

    def _send(self, sending: Coroutine[Any, Any, None]) -> None:
        if len(self._notifying) >= MAX_NOTIFICATIONS_IN_FLIGHT:
            sending.close()
            return
        task = asyncio.create_task(self._quietly(sending))
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    @staticmethod
    async def _quietly(sending: Coroutine[Any, Any, None]) -> None:
        try:
            await sending
        except Exception as exc:  # optional by the spec; a closed session must not matter
            log.debug("notification not delivered: %s", exc)

    # tools

    async def list_tools(self, ctx: ServerRequestContext[Any, Any], params: Any) -> dict[str, Any]:
        tools: dict[str, Any] = {"tools": [tool.definition() for tool in self.app.tools.values()]
                                 + self._read_tool_definitions}
        if is_modern(ctx):
            # The same tools for every principal, fixed for the life of the process.
            tools.update(resultType="complete", ttlMs=TOOLS_CACHE_MS, cacheScope="public")
        return tools

    async def call_tool_as_task(self, ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
        """A task-augmented ``tools/call``: CreateTaskResult once the created event is durable."""
        params = types.CallToolRequestParams.model_validate(ctx.params, by_name=False)
        tool = self._tool(params.name)
        if tool.task_support == "forbidden":
            raise MCPError(METHOD_NOT_FOUND, f"Tool {tool.name!r} does not support task-augmented calls")
        ttl = params.task.ttl if params.task is not None else None
        row = await create_task(self.service, params, ctx, ttl, PROTOCOL)
        self._follow(ctx, row.task_id, status=True)
        result: dict[str, Any] = {"task": task_json(row)}
        with_pending(result, row)
        result.setdefault("_meta", {})[IMMEDIATE_RESPONSE] = (
            f"Started {tool.name} as background task {row.task_id}; it may ask for input."
        )
        return result

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> dict[str, Any]:
        """A plain ``tools/call``: the tool still runs as a ledger task; the call waits for its result."""
        if params.name in self.read_tools:
            result = await call_read_tool(self.read_side, params.name, params.arguments, principal_of(ctx))
            return {"resultType": "complete", **result} if is_modern(ctx) else result
        tool = self._tool(params.name)
        if is_modern(ctx):
            return await self.modern.call_tool(ctx, params, tool)
        if tool.task_support == "required":
            raise MCPError(METHOD_NOT_FOUND, f"Tool {tool.name!r} must be called as a task (task augmentation required)")
        row = await create_task(self.service, params, ctx, None, PROTOCOL)
        self._follow(ctx, row.task_id, status=False)
        try:
            return await self._plain_call(ctx, row)
        finally:
            self._creators.pop(row.task_id, None)  # its progress has no request to go to any more

    async def _plain_call(self, ctx: ServerRequestContext[Any, Any], row: TaskRow) -> dict[str, Any]:
        principal = principal_of(ctx)
        if client_can_elicit(ctx):
            return tool_call_result(await self._relay_until_ended(ctx, row.task_id, principal, related=False))
        # The client cannot be asked: rather than hold the call open forever, say which task
        # waits for what, so that it can be answered through tasks/get _meta.
        row = await self.service.wait(row.task_id, principal, awaits_client, None)
        if row.terminal:
            return tool_call_result(row)
        waiting = error_result(f"Task {row.task_id} needs input: {row.pending[0].message} Answer it with "
                               f"tasks/get _meta[{ELICITATION_RESPONSE!r}], in the /ui inbox, or from a "
                               f"terminal: ledger answer {row.task_id}")
        waiting["_meta"] = {RELATED_TASK: {"taskId": row.task_id},
                            PENDING_ELICITATIONS: [pending_json(p) for p in row.pending]}
        return waiting

    def _tool(self, name: str) -> Any:
        try:
            return self.app.get(name)
        except UnknownTool as exc:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {exc.name}") from None

    # resources: the read side

    async def list_resource_templates(self, ctx: ServerRequestContext[Any, Any],
                                      params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[
            types.ResourceTemplate(name="task", uri_template=TASK_URI, mime_type="application/json",
                                   description="A task: status, what it waits for, its result."),
            types.ResourceTemplate(name="task-history", uri_template=HISTORY_URI, mime_type="application/json",
                                   description="A task's timeline from the log, with each entry's partition "
                                               "and offset."),
        ], ttl_ms=TOOLS_CACHE_MS, cache_scope="public")

    async def list_resources(self, ctx: ServerRequestContext[Any, Any],
                             params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        # Tasks are addressed through the templates; listing them is the list_tasks tool (paginated).
        return types.ListResourcesResult(resources=[])

    async def read_resource(self, ctx: ServerRequestContext[Any, Any],
                            params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        try:
            text = await read_resource(self.read_side, uri, principal_of(ctx))
        except TaskNotFound:
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}") from None
        return types.ReadResourceResult(contents=[
            types.TextResourceContents(uri=uri, mime_type="application/json", text=text)])

    # tasks

    async def get_task(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        if is_modern(ctx):
            return await self.modern.get_task(ctx, params.task_id)
        principal = principal_of(ctx)
        answer = (params.meta or {}).get(ELICITATION_RESPONSE)
        with service_errors():
            if answer is None:
                row = await self.service.find(params.task_id, principal)
            else:
                row = await self.service.settle(
                    await self._submit(params.task_id, principal, answer, PROTOCOL + "/meta"))
        return with_pending(task_json(row), row)

    async def task_result(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        legacy_only(ctx, "tasks/result", "the task's result is inline in tasks/get")
        with service_errors():
            row = await self._relay_until_ended(ctx, params.task_id, principal_of(ctx), related=True)
        result = tool_call_result(row)
        result["_meta"] = {**result.get("_meta", {}), RELATED_TASK: {"taskId": row.task_id}}
        return result

    async def list_tasks(self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams) -> dict[str, Any]:
        legacy_only(ctx, "tasks/list", "the tasks extension has no listing")
        with service_errors():
            rows, next_cursor = await self.service.page(principal_of(ctx), params.cursor)
        result: dict[str, Any] = {"tasks": [task_json(row) for row in rows]}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        return result

    async def cancel_task(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        if is_modern(ctx):
            return await self.modern.cancel_task(ctx, params.task_id)
        with service_errors():
            row = await self.service.cancel(params.task_id, principal_of(ctx), protocol=PROTOCOL)
        return task_json(row)

    async def update_task(self, ctx: ServerRequestContext[Any, Any], params: extension_tasks.UpdateTaskParams) -> dict[str, Any]:
        if not is_modern(ctx):
            raise MCPError(METHOD_NOT_FOUND, f"tasks/update is a method of the 2026-07-28 tasks extension; at "
                           f"{ctx.protocol_version} answer with tasks/get _meta[{ELICITATION_RESPONSE!r}]")
        return await self.modern.update_task(ctx, params)

    async def _submit(self, task_id: str, principal: str | None, answer: Any, protocol: str) -> TaskRow:
        if not isinstance(answer, Mapping) or not isinstance(answer.get("elicitationId"), str):
            raise MCPError(INVALID_PARAMS, f"{ELICITATION_RESPONSE} must be an object with elicitationId, action "
                                           "and (when accepting) content")
        return await self.service.answer(task_id, principal, answer["elicitationId"], answer.get("action"),
                                         answer.get("content"), protocol=protocol)

    async def _relay_until_ended(self, ctx: ServerRequestContext[Any, Any], task_id: str, principal: str | None,
                                 *, related: bool) -> TaskRow:
        """Wait for the task to end, relaying each elicitation it asks to this client (pattern A).

        A client that cannot answer elicitations just waits: the task stays input_required and can
        be answered through ``tasks/get`` ``_meta`` by any client of the same principal.
        """
        relay = client_can_elicit(ctx)
        relayed: set[str] = set()

        def needs_us(row: TaskRow) -> bool:
            return row.terminal or (relay and any(p.elicitation_id not in relayed for p in row.pending))

        while True:
            row = await self.service.wait(task_id, principal, needs_us, None)
            if row.terminal:
                return row
            for pending in row.pending:
                if pending.elicitation_id not in relayed:
                    relayed.add(pending.elicitation_id)
                    await self._relay(ctx, row, pending, related)

    async def _relay(self, ctx: ServerRequestContext[Any, Any], row: TaskRow, pending: PendingElicitation,
                     related: bool) -> None:
        meta = {**({RELATED_TASK: {"taskId": row.task_id}} if related else {}), **deadline_meta(pending)}
        request = types.ElicitRequest(params=types.ElicitRequestFormParams(
            message=pending.message, requested_schema=json.loads(pending.requested_schema_json), _meta=meta or None,
        ))
        asking = asyncio.ensure_future(ctx.session.send_request(
            request, types.ElicitResult, metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
        ))
        # The question may be resolved without this client (its deadline passed, another client answered):
        # the relay then moves on to what the task does next instead of waiting on a stale question.
        resolved = asyncio.ensure_future(self.service.view.wait(
            row.task_id, lambda r: r is None or r.pending_elicitation(pending.elicitation_id) is None, None))
        try:
            await asyncio.wait({asking, resolved}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            resolved.cancel()
            asking.cancel()
        if not asking.done() or asking.cancelled():
            return
        if (failed := asking.exception()) is not None:  # the client went away or refused; the task stays answerable
            log.info("task %s: relaying elicitation %s failed: %s", row.task_id, pending.elicitation_id, failed)
            return
        answer = asking.result()
        try:
            await self.service.answer(row.task_id, row.principal, pending.elicitation_id, answer.action,
                                      answer.content, protocol=PROTOCOL + "/relay")
        except Refused as exc:
            log.info("task %s: relayed answer refused: %s", row.task_id, exc)
