"""MCP 2026-07-28 on the same ledger: the tasks extension and multi round-trip requests.

Requests arrive stateless (the SDK checks the routing headers and the ``_meta`` envelope); any
server instance answers any of them from its live view, so nothing here keeps per-client state.

* A ``tools/call`` from a client that declared ``io.modelcontextprotocol/tasks`` becomes a task:
  ``resultType: "task"`` once the created event is durable. ``tasks/get`` shows what the task
  waits for as ``inputRequests`` (keyed by elicitation id, unique for the task's lifetime) and
  the result or error inline; ``tasks/update`` answers them; ``tasks/cancel`` cancels.
* A ``tools/call`` from any other client is still a ledger task, driven by multi round-trip
  requests: each round answers ``input_required`` with what the tool asks and a ``requestState``
  naming the task, sealed by the SDK's boundary under a key every instance shares, so any
  instance can continue the next round.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import require_client_extension
from mcp.shared.exceptions import MCPError
from pydantic import Field

from ledger.contract.events import MULTI_ROUND
from ledger.engine.app import Tool
from ledger.mcp.wire import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    create_task,
    deadline_meta,
    principal_of,
    service_errors,
    task_fields,
    tool_call_result,
)
from ledger.service.tasks import TaskService, awaits_client
from projections.status import PendingElicitation, TaskRow

PROTOCOL = "2026-07-28"
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
HEADER_MISMATCH = -32020
MISSING_CAPABILITY = -32021
NO_ELICITATION = "The tool asked a question, and the client that called it cannot answer questions."


class UpdateTaskParams(types.RequestParams):
    task_id: str = Field(alias="taskId", min_length=1)
    input_responses: dict[str, Any] = Field(alias="inputResponses")


def task_json(row: TaskRow) -> dict[str, Any]:
    """The extension's ``Task``: a tool result with isError still counts as completed."""
    return task_fields(row, status=row.status, ttl="ttlMs", poll_interval="pollIntervalMs")


def input_requests(row: TaskRow) -> dict[str, Any]:
    return {pending.elicitation_id: elicit_request(pending) for pending in row.pending}


def elicit_request(pending: PendingElicitation) -> dict[str, Any]:
    return {
        "method": "elicitation/create",
        "params": {
            "mode": pending.mode,
            "message": pending.message,
            "requestedSchema": json.loads(pending.requested_schema_json),
            **({"_meta": meta} if (meta := deadline_meta(pending)) else {}),
        },
    }


def detailed_task_json(row: TaskRow) -> dict[str, Any]:
    """``tasks/get``: the task, with what it waits for, or its result or error, inline."""
    task = task_json(row)
    if row.status == "input_required":
        task["inputRequests"] = input_requests(row)
    elif row.status == "completed" and row.result_json is not None:
        task["result"] = json.loads(row.result_json)
    elif row.status == "failed":
        task["error"] = {"code": INTERNAL_ERROR, "message": row.error or "The task failed."}
    return {"resultType": "complete", **task}


def declared_tasks(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and TASKS_EXTENSION in capabilities.extensions)


def can_elicit(ctx: ServerRequestContext[Any, Any]) -> bool:
    capabilities = ctx.session.client_capabilities
    return capabilities is not None and capabilities.elicitation is not None


def check_routing_name(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    """tasks/* carry the task id in ``Mcp-Name`` for routing; a header that disagrees is refused."""
    headers = getattr(ctx.request, "headers", None)
    name = headers.get("mcp-name") if headers is not None else None
    if name is not None and name != task_id:
        raise MCPError(HEADER_MISMATCH, f"Header mismatch: Mcp-Name {name!r} does not match taskId {task_id!r}")


class ModernAdapter:
    """2026-07-28 requests in, task service calls out."""

    def __init__(self, service: TaskService, round_wait_s: float) -> None:
        self.service = service
        self.round_wait_s = round_wait_s

    async def call_tool(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams,
                        tool: Tool) -> dict[str, Any]:
        # A requestState continues a multi round-trip call, whatever the client declares now: starting a
        # new task would drop the answers it carries.
        if tool.task_support != "forbidden" and declared_tasks(ctx) and params.request_state is None:
            row = await create_task(self.service, params, ctx, None, f"{PROTOCOL}/tasks")
            return {"resultType": "task", **task_json(await self.service.settle(row))}
        if tool.task_support == "required":
            require_client_extension(ctx, TASKS_EXTENSION)
        return await self._round(ctx, params)

    async def _round(self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> dict[str, Any]:
        """One round of a multi round-trip tools/call: the result, or what the tool waits for."""
        principal = principal_of(ctx)
        protocol = f"{PROTOCOL}/{MULTI_ROUND}"
        if params.request_state is None:
            row = await create_task(self.service, params, ctx, None, protocol)
        else:
            task_id = params.request_state  # unsealed and checked by the SDK's boundary
            with service_errors():
                row = await self.service.find(task_id, principal)
                if params.input_responses:
                    row = await self.service.answer_all(task_id, principal, _answers(params.input_responses),
                                                        protocol=protocol)
        with service_errors():
            row = await self.service.wait(row.task_id, principal, awaits_client, self.round_wait_s)
        if row.terminal:
            return {"resultType": "complete", **tool_call_result(row)}
        if not row.pending:
            return {"resultType": "input_required", "requestState": row.task_id}
        if not can_elicit(ctx):
            # Nobody could ever answer it: the task is cancelled rather than left waiting forever.
            with service_errors():
                await self.service.cancel(row.task_id, principal, protocol=protocol, confirm=False,
                                          reason=NO_ELICITATION)
            raise MCPError(MISSING_CAPABILITY, f"Task {row.task_id} needs input, and the client did not declare "
                           "the elicitation capability; the task is cancelled",
                           data={"requiredCapabilities": {"elicitation": {}}})
        return {"resultType": "input_required", "inputRequests": input_requests(row), "requestState": row.task_id}

    async def get_task(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> dict[str, Any]:
        self._check(ctx, task_id)
        with service_errors():
            row = await self.service.find(task_id, principal_of(ctx))
        return detailed_task_json(row)

    async def update_task(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> dict[str, Any]:
        self._check(ctx, params.task_id)
        answers = _answers({key: _elicit_result(key, value) for key, value in params.input_responses.items()})
        with service_errors():
            row = await self.service.answer_all(params.task_id, principal_of(ctx), answers,
                                                protocol=f"{PROTOCOL}/tasks", ignore_stale=True)
            await self.service.settle(row)
        return {"resultType": "complete"}

    async def cancel_task(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> dict[str, Any]:
        self._check(ctx, task_id)
        with service_errors():
            await self.service.cancel(task_id, principal_of(ctx), protocol=f"{PROTOCOL}/tasks", confirm=False)
        return {"resultType": "complete"}

    @staticmethod
    def _check(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
        require_client_extension(ctx, TASKS_EXTENSION)
        check_routing_name(ctx, task_id)


def _elicit_result(key: str, value: Any) -> types.ElicitResult:
    try:
        return types.ElicitResult.model_validate(value)
    except ValueError:
        raise MCPError(INVALID_PARAMS, f"inputResponses[{key!r}] must be an elicitation result: "
                       "{action: accept|decline|cancel, content?}") from None


def _answers(responses: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    answers = {}
    for key, response in responses.items():
        if not isinstance(response, types.ElicitResult):
            raise MCPError(INVALID_PARAMS, f"inputResponses[{key!r}] answers an elicitation, and must be an "
                           "elicitation result")
        answers[key] = (response.action, response.content)
    return answers
