"""The web timeline at ``/ui``: the task list with status filters and each task's elicitation
timeline, updated live as events arrive.

The page (``ui.html``) reads the same read side as the MCP tools, as the requesting principal:

* ``GET /ui/api/tasks?status=&tool=&cursor=``: a page of tasks (``list_tasks``);
* ``GET /ui/api/tasks/{task_id}``: the task and its timeline (``task_history``), 404 if not visible;
* ``GET /ui/api/events``: server-sent events, one ``task`` event with the task's row each time a
  visible task changes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ledger.readside import ReadSide, row_json
from ledger.service import InvalidCursor, TaskNotFound
from ledger.view import LiveView
from ledger.wire import principal_of_request
from projections.status import TaskRow

STATUSES = ("working", "input_required", "completed", "failed", "cancelled", "terminal")
EVENTS_PER_CLIENT = 1_000
KEEPALIVE_S = 15.0


def ui_routes(read_side: ReadSide, view: LiveView, *, authenticated: bool = False) -> list[Route]:
    """With ``authenticated``, the API answers only requests with a valid bearer token."""
    page = resources.files("ledger").joinpath("ui.html").read_text(encoding="utf-8")

    def guarded(endpoint: Any) -> Any:
        async def checked(request: Request) -> Response:
            if authenticated and not request.user.is_authenticated:
                return JSONResponse({"error": "a bearer token is required"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return await endpoint(request)
        return checked

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def tasks(request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            return JSONResponse({"error": f"status must be one of {', '.join(STATUSES)}"}, status_code=400)
        try:
            found = await read_side.tasks(principal_of_request(request), status=status,
                                          tool=request.query_params.get("tool") or None,
                                          cursor=request.query_params.get("cursor") or None)
        except InvalidCursor as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(found)

    async def task(request: Request) -> Response:
        try:
            return JSONResponse(await read_side.history(principal_of_request(request), request.path_params["task_id"]))
        except TaskNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def events(request: Request) -> Response:
        principal = principal_of_request(request)
        changed: asyncio.Queue[TaskRow] = asyncio.Queue(EVENTS_PER_CLIENT)

        def on_change(before: TaskRow | None, after: TaskRow | None) -> None:
            if after is not None and read_side.visible(after, principal) and not changed.full():
                changed.put_nowait(after)  # a client too slow for the stream misses updates, not memory

        async def stream() -> AsyncIterator[str]:
            view.listen(on_change)
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        row = await asyncio.wait_for(changed.get(), KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: task\ndata: {json.dumps(row_json(row))}\n\n"
            finally:
                view.unlisten(on_change)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def slash(request: Request) -> Response:
        return RedirectResponse("/ui")

    return [
        Route("/ui", index),
        Route("/ui/", slash),
        Route("/ui/api/tasks", guarded(tasks)),
        Route("/ui/api/tasks/{task_id}", guarded(task)),
        Route("/ui/api/events", guarded(events)),
    ]
