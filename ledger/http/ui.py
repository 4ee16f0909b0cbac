"""The web timeline at ``/ui``: the task list with status filters and each task's elicitation
timeline, updated live as events arrive.

The page (``ui.html``) reads the same read side as the MCP tools, as the requesting principal:

* ``GET /ui/api/tasks?status=&tool=&cursor=``: a page of tasks (``list_tasks``);
* ``GET /ui/api/tasks/{task_id}``: the task and its timeline (``task_history``), 404 if not visible;
* ``GET /ui/api/events``: server-sent events, one ``task`` event with the task's row each time a
  visible task changes;
* ``GET /ui/api/inbox``: the questions the principal's own tasks wait on; ``POST
  /ui/api/tasks/{task_id}/answer`` (``{"elicitationId", "action", "content"}``) answers one, through
  the same service path as MCP answers, recorded with protocol ``web``; 400 with ``fields`` (field ->
  why) for content the schema refuses;
* ``GET /ui/api/me``, ``POST /ui/login`` (``{"token": ...}``) and ``POST /ui/logout``: signing in
  with a bearer token where the server takes tokens, or at the OAuth issuer (``GET /ui/login/start``)
  where the server has a client there (``ledger.http.login``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterable
from importlib import resources
from typing import Any

from aiokafka.errors import KafkaError
from mcp.server.auth.provider import TokenVerifier
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ledger.contract.elicitation import field_errors
from ledger.contract.values import problem_in
from ledger.http.auth import missing_scopes
from ledger.http.login import COOKIE, COOKIE_PATH, FLOW_PATH, UI_SESSION_TOKEN, SignInAtIssuer, WebSessions
from ledger.http.oauth import IssuerUnavailable
from ledger.mcp.wire import principal_of_request, principal_of_token
from ledger.service.errors import InvalidCursor, Refused, TaskNotFound
from ledger.service.live_view import LiveView
from ledger.service.queries import ReadSide, row_json
from ledger.service.tasks import TaskService
from ledger.settings import WEB_SESSION_S
from projections.status import TaskRow

STATUSES = ("working", "input_required", "completed", "failed", "cancelled", "terminal")
EVENTS_PER_CLIENT = 1_000
KEEPALIVE_S = 15.0
MAX_TOKEN_CHARS = 8_192
WEB = "web"  # the protocol path answers from the page are recorded with


def ui_routes(read_side: ReadSide, view: LiveView, service: TaskService, *, verifier: TokenVerifier | None = None,
              sessions: WebSessions | None = None, at_issuer: SignInAtIssuer | None = None,
              scopes: tuple[str, ...] = ()) -> list[Route]:
    """With a ``verifier``, the API answers only signed-in requests: a valid bearer token, or the
    session cookie ``POST /ui/login`` sets for one, or ``at_issuer``'s sign-in (``ledger.http.login``)."""
    page = resources.files("ledger.http").joinpath("ui.html").read_text(encoding="utf-8")
    authenticated = verifier is not None

    def guarded(endpoint: Any) -> Any:
        async def checked(request: Request) -> Response:
            if authenticated and not request.user.is_authenticated:
                return JSONResponse({"error": "a bearer token is required"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            if authenticated and (missing := missing_scopes(scopes, request.user.scopes)) and \
                    request.user.access_token.token != UI_SESSION_TOKEN:  # a session's token was checked at sign-in
                return JSONResponse({"error": f"the token lacks the scope {missing}"}, status_code=403,
                                    headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", '
                                                                 f'scope="{" ".join(scopes)}"'})
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

    # Each open event stream's queue, by principal: a change is offered to its owner's streams and the
    # auditors', so that one principal's many streams cost nothing to another's events.
    feeds: dict[str | None, set[asyncio.Queue[TaskRow]]] = {}

    def on_change(before: TaskRow | None, after: TaskRow | None) -> None:
        if after is None:
            return
        _offer(feeds.get(after.principal, ()), after)
        for auditor in read_side.auditors:
            if auditor != after.principal:
                _offer(feeds.get(auditor, ()), after)

    view.listen(on_change)

    async def events(request: Request) -> Response:
        principal = principal_of_request(request)
        open_here = len(feeds.get(principal, ()))
        if open_here >= service.settings.principal_streams:
            return JSONResponse({"error": f"you already have {open_here} event streams open on this server "
                                          "(LEDGER_PRINCIPAL_STREAMS); close one first"}, status_code=429)
        changed: asyncio.Queue[TaskRow] = asyncio.Queue(EVENTS_PER_CLIENT)

        async def stream() -> AsyncIterator[str]:
            feeds.setdefault(principal, set()).add(changed)
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
                mine = feeds[principal]
                mine.discard(changed)
                if not mine:
                    del feeds[principal]

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def slash(request: Request) -> Response:
        return RedirectResponse("/ui")

    async def inbox(request: Request) -> Response:
        return JSONResponse(await read_side.inbox(principal_of_request(request)))

    async def answer(request: Request) -> Response:
        """A person's answer from the page: the same service path as an MCP answer (validated, applied
        once, recorded with protocol ``web`` and who answered)."""
        task_id, principal = request.path_params["task_id"], principal_of_request(request)
        if (refused := foreign(request)) is not None:
            return refused
        body = await json_body(request)
        elicitation_id = body.get("elicitationId") if isinstance(body, dict) else None
        action = body.get("action") if isinstance(body, dict) else None
        if not isinstance(elicitation_id, str) or not isinstance(action, str):
            return JSONResponse({"error": 'send {"elicitationId": "...", "action": "accept", "content": {...}} '
                                          'as application/json'}, status_code=400)
        content = body.get("content") if action == "accept" else None
        try:
            row = await service.answer(task_id, principal, elicitation_id, action, content, protocol=WEB)
        except TaskNotFound as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except Refused as exc:
            row = await view.load(task_id)
            pending = row.pending_elicitation(elicitation_id) if row is not None else None
            fields = field_errors(pending.requested_schema_json, content) if pending and action == "accept" else {}
            return JSONResponse({"error": str(exc), "fields": fields}, status_code=400)
        return JSONResponse({"task": row_json(await service.settle(row))})

    async def me(request: Request) -> Response:
        signed_in = request.user.is_authenticated if authenticated else False
        return JSONResponse({"signInRequired": authenticated, "signedIn": signed_in,
                             "principal": principal_of_request(request) if signed_in else None,
                             "signInAt": f"{FLOW_PATH}/start" if at_issuer else None})

    async def login(request: Request) -> Response:
        if verifier is None or sessions is None:
            return JSONResponse({"error": "this server takes no tokens: there is nothing to sign in to"},
                                status_code=404)
        if (refused := foreign(request)) is not None:
            return refused
        body = await json_body(request)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS or problem_in(token) is not None:
            return JSONResponse({"error": 'send {"token": "..."} as application/json'}, status_code=400)
        try:
            access = await verifier.verify_token(token)
        except IssuerUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503,
                                headers={"Retry-After": "5"})
        if access is None or (access.expires_at is not None and access.expires_at < time.time()):
            return JSONResponse({"error": "that token is not valid here"}, status_code=401)
        if missing := missing_scopes(scopes, access.scopes):
            return JSONResponse({"error": f"that token lacks the scope {missing}"}, status_code=403)
        principal = principal_of_token(access)
        response = JSONResponse({"principal": principal})
        response.set_cookie(COOKIE, sessions.issue(principal), max_age=WEB_SESSION_S, path=COOKIE_PATH, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(request: Request) -> Response:
        if (refused := foreign(request)) is not None:
            return refused
        if sessions is not None and (cookie := request.cookies.get(COOKIE)):
            try:
                await sessions.sign_out(cookie)
            except KafkaError:
                return JSONResponse({"error": "the sign-out could not be recorded on the log; try again"},
                                    status_code=503, headers={"Retry-After": "1"})
        response = JSONResponse({"signedIn": False})
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
        return response

    return [
        Route("/ui", index),
        Route("/ui/", slash),
        Route("/ui/api/tasks", guarded(tasks)),
        Route("/ui/api/tasks/{task_id}", guarded(task)),
        Route("/ui/api/events", guarded(events)),
        Route("/ui/api/me", me),
        Route("/ui/api/inbox", guarded(inbox)),
        Route("/ui/api/tasks/{task_id}/answer", guarded(answer), methods=["POST"]),
        Route("/ui/login", login, methods=["POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        *([Route(f"{FLOW_PATH}/start", at_issuer.start), Route(f"{FLOW_PATH}/callback", at_issuer.callback)]
          if at_issuer else []),
    ]


async def json_body(request: Request) -> Any:
    """The request's JSON body, or None when it is not JSON one can read: another content type (a
    form or text/plain, which any page may post without asking), invalid, or nested past what the
    parser takes."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        return None
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):
        return None


def _offer(queues: Iterable[asyncio.Queue[TaskRow]], row: TaskRow) -> None:
    for queue in queues:
        if not queue.full():  # a client too slow for the stream misses updates, not memory
            queue.put_nowait(row)


def foreign(request: Request) -> Response | None:
    """403 for a browser request sent by a page of another origin (scheme, host and port): the page's
    own requests carry its origin, and tools without a browser send none."""
    origin = request.headers.get("origin")
    if origin is None or origin == f"{request.url.scheme}://{request.headers.get('host')}":
        return None
    return JSONResponse({"error": "send this from this server's own page"}, status_code=403)
