"""The real ``mcp`` SDK client in its 2026-07-28 mode, with a tasks extension for ``resultType: "task"``.

The SDK ships no client side of the tasks extension, so this is the smallest one a client would
write: claim ``resultType: "task"``, poll ``tasks/get`` at the advertised interval, answer its
``inputRequests`` with the same person who answers multi round-trip requests, and return the
inline result.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import mcp_types as types
from mcp import Client
from mcp.client import ClaimContext, ClientExtension, ResultClaim
from pydantic import ConfigDict, Field

from tests.support.mcp_client import RAW, answers


class CreatedTask(types.Result):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    result_type: Literal["task"] = Field("task", alias="resultType")
    task_id: str = Field(alias="taskId")
    poll_interval_ms: int | None = Field(None, alias="pollIntervalMs")


class TaskParams(types.RequestParams):
    task_id: str = Field(alias="taskId")


class GetTask(types.Request[TaskParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskParams
    name_param = "taskId"


class UpdateParams(TaskParams):
    input_responses: dict[str, Any] = Field(alias="inputResponses")


class UpdateTask(types.Request[UpdateParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    params: UpdateParams
    name_param = "taskId"


async def finish_task(created: CreatedTask, ctx: ClaimContext) -> types.CallToolResult:
    interval = (created.poll_interval_ms or 500) / 1000
    while True:
        task = await ctx.session.send_request(GetTask(params=TaskParams(taskId=created.task_id)), RAW)
        if task["status"] == "completed":
            return types.CallToolResult.model_validate(task["result"])
        if task["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"task {created.task_id} {task['status']}: {task.get('statusMessage')}")
        if task["status"] == "input_required":
            responses = {key: answers(types.ElicitRequestFormParams.model_validate(request["params"]))
                         .model_dump(by_alias=True, exclude_none=True)
                         for key, request in task["inputRequests"].items()}
            await ctx.session.send_request(
                UpdateTask(params=UpdateParams(taskId=created.task_id, inputResponses=responses)), RAW)
            continue
        await asyncio.sleep(interval)


class TasksExtension(ClientExtension):
    identifier = "io.modelcontextprotocol/tasks"

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=finish_task)]


@asynccontextmanager
async def modern_client(url: str, *, with_tasks: bool) -> AsyncIterator[Client]:
    """A 2026-07-28 client that answers elicitations as ``answers`` does; with or without tasks."""
    async def elicited(ctx: Any, params: types.ElicitRequestFormParams) -> types.ElicitResult:
        return answers(params)

    extensions = [TasksExtension()] if with_tasks else []
    async with Client(url, mode="2026-07-28", elicitation_callback=elicited, extensions=extensions,
                      read_timeout_seconds=60) as client:
        yield client
