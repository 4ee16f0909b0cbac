"""The read side over MCP: the ``list_tasks``, ``task_history`` and ``pending_elicitations`` tools and
the ``ledger://tasks/...`` resources, answered by ``ReadSide`` as the requesting principal."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ledger.contract.values import problem_in
from ledger.engine.app import error_result
from ledger.service.errors import InvalidCursor, TaskNotFound
from ledger.service.queries import ReadSide


class ListTasksArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["working", "input_required", "completed", "failed", "cancelled", "terminal"] | None = Field(
        None, description="Only tasks in this status ('terminal': completed, failed or cancelled).")
    tool: str | None = Field(None, description="Only tasks of this tool.")
    cursor: str | None = Field(None, description="nextCursor of the previous page.")


class TaskHistoryArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(min_length=1, description="The task whose timeline to show.")


MAX_AGE_S = 10 * 365 * 24 * 3600


class PendingArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than_seconds: float = Field(0, ge=0, le=MAX_AGE_S, allow_inf_nan=False,
                                      description="Only questions asked at least this long ago (up to ten years).")
    answerable: bool = Field(False, description="Only the questions of your own tasks, the ones you may answer "
                                                "(an auditor sees every principal's otherwise).")


READ_TOOLS: dict[str, tuple[type[BaseModel], str]] = {
    "list_tasks": (ListTasksArguments, "Your tasks, newest last, with their status and what they wait for "
                                       "(paginated: pass nextCursor as cursor)."),
    "task_history": (TaskHistoryArguments, "A task's timeline from the log: created, each question asked, each "
                                           "answer (who, when, through which protocol path), refused and "
                                           "duplicate answers, progress, steps, cancellation, outcome."),
    "pending_elicitations": (PendingArguments, "Questions your tasks asked that nobody has answered yet."),
}


def read_tool_definitions() -> list[dict[str, Any]]:
    return [{"name": name, "description": description, "inputSchema": model.model_json_schema(),
             "execution": {"taskSupport": "forbidden"}}
            for name, (model, description) in READ_TOOLS.items()]


async def call_read_tool(read_side: ReadSide, name: str, arguments: dict[str, Any] | None,
                         principal: str | None) -> dict[str, Any]:
    """A read tool's CallToolResult: structured content, and the same JSON as text."""
    model, _ = READ_TOOLS[name]
    if (problem := problem_in(arguments or {}, "arguments")) is not None:
        return error_result(f"Invalid arguments for {name}: {problem}")
    try:
        parsed = model.model_validate(arguments or {})
    except ValidationError as exc:
        return error_result(f"Invalid arguments for {name}: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()))
    try:
        if isinstance(parsed, ListTasksArguments):
            value = await read_side.tasks(principal, status=parsed.status, tool=parsed.tool, cursor=parsed.cursor)
        elif isinstance(parsed, TaskHistoryArguments):
            value = await read_side.history(principal, parsed.task_id)
        else:
            value = await read_side.pending(principal, parsed.older_than_seconds, answerable=parsed.answerable)
    except (TaskNotFound, InvalidCursor) as exc:
        return error_result(str(exc))
    return {"content": [{"type": "text", "text": json.dumps(value)}], "structuredContent": value}


TASK_URI = "ledger://tasks/{task_id}"
HISTORY_URI = "ledger://tasks/{task_id}/history"


async def read_resource(read_side: ReadSide, uri: str, principal: str | None) -> str:
    """The JSON text of a ``ledger://tasks/...`` resource; TaskNotFound for anything else."""
    prefix = "ledger://tasks/"
    if not uri.startswith(prefix):
        raise TaskNotFound(uri)
    task_id, _, rest = uri[len(prefix):].partition("/")
    if rest == "history":
        return json.dumps(await read_side.history(principal, task_id))
    if rest == "" and task_id:
        return json.dumps(await read_side.task(principal, task_id))
    raise TaskNotFound(uri)
