"""The HTTP app of one server instance: ``/mcp`` (streamable HTTP), ``/ui``, ``/healthz``, ``/readyz``
and ``/metrics``.

Its lifespan starts the event log and the live view (caught up before the first request) and the
MCP session manager; until the view has caught up, ``/mcp`` answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.provider import TokenVerifier
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from ledger import hops
from ledger.engine.app import App
from ledger.http.auth import RequireBearer, check_exposure, issuer_unavailable, protected_resource, token_verifier
from ledger.http.hosts import HostCheck, transport_security
from ledger.http.intake import Intake
from ledger.http.login import BearerOrSession, SignInAtIssuer, WebSessions
from ledger.http.oauth import OAuthVerifier
from ledger.http.ui import ui_routes
from ledger.kafka.appender import EventLog
from ledger.kafka.health import LogHealth
from ledger.kafka.security import KafkaSecurityError
from ledger.kafka.signouts import SignOuts
from ledger.mcp.extension_tasks import ModernAdapter
from ledger.mcp.server import (
    build_mcp_server,
    modern_answers_as_json,
    request_state_security,
    sessions_per_principal,
    timed,
)
from ledger.mcp.session_tasks import Adapter
from ledger.mcp.wire import (
    INTERNAL_ERROR,
)
from ledger.metrics import Metrics
from ledger.service.live_view import LiveView
from ledger.service.queries import ReadSide
from ledger.service.shared_view import SharedView
from ledger.service.tasks import TaskService
from ledger.settings import Settings
from projections.postgres import PostgresStore
from projections.store import ProjectionStore, Store

log = logging.getLogger(__name__)

MIN_BODY_LIMIT = 1 << 20


def _projections(settings: Settings, metrics: Metrics) -> tuple[Store, LiveView]:
    """The store the read side reads, and the view that follows the log: with ``LEDGER_DATABASE_URL``,
    the shared store the projectors keep and a view that starts where it stands; else a store of the
    server's own (``LEDGER_STORE``, or a temporary file) that its view writes."""
    if settings.database_url:
        database = PostgresStore(settings.database_url)
        return database, SharedView(settings, database, metrics)
    store = ProjectionStore(settings.store, rebuild_outdated=True) if settings.store else ProjectionStore.temporary()
    return store, LiveView(settings, store, metrics)


def create_app(app: App, settings: Settings, instance: str | None = None, *, host: str = "127.0.0.1",
               port: int | None = None, verifier: TokenVerifier | None = None) -> Starlette:
    """The ASGI app of one server instance: ``/mcp``, ``/ui`` and ``/healthz``.

    ``verifier`` (default: ``LEDGER_OAUTH_ISSUER``'s access tokens, else those of ``LEDGER_TOKENS_FILE``)
    authenticates every request but ``/healthz``; ``host`` and ``port`` are the address served, for the
    DNS-rebinding checks and the URL tokens are issued for.
    """
    instance = instance or f"{socket.gethostname()}-{os.getpid()}"
    resource = protected_resource(settings, host, port)
    verifier = verifier or token_verifier(settings, resource)
    check_exposure(settings, host, verifier)
    metrics = Metrics()
    event_log = EventLog(settings, client_id=f"{settings.client_id}-server-{instance}", metrics=metrics)
    health = LogHealth(settings, event_log)
    store, view = _projections(settings, metrics)
    metrics.watch(store.count_by_status, view.lag, view.dead_letters)
    metrics.registry.register(event_log.series())
    service = TaskService(app, settings, event_log, view, actor=f"server:{instance}", metrics=metrics)
    modern_adapter = ModernAdapter(service, settings.round_wait_ms / 1000)
    read_side = ReadSide(store, settings.auditor_names, current=view.get, written=view.flush)
    adapter = Adapter(app, service, view, modern_adapter, read_side)
    server = build_mcp_server(app, adapter, request_state_security(settings))
    server.middleware.insert(0, timed(metrics))
    security = transport_security(settings, host)
    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp", host=host, transport_security=security,
    )
    sessions_per_principal(server.session_manager, settings.principal_streams)
    modern_answers_as_json(server.session_manager)
    sign_outs = SignOuts(settings, client_id=f"{settings.client_id}-sign-outs-{instance}") if verifier else None
    sessions = WebSessions(settings.request_state_key, sign_outs) if sign_outs else None
    at_issuer = SignInAtIssuer(verifier, sessions, resource) if isinstance(verifier, OAuthVerifier) and \
        verifier.signs_people_in and sessions and resource else None

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # The server listens while its view catches up with the log (health checks answer, /mcp says
        # to come back, a stop signal stops it); MCP requests are served once it has caught up.
        try:
            try:
                await event_log.start()
                await health.start()
                if sign_outs is not None:
                    await sign_outs.start()
            except KafkaSecurityError as exc:  # said by the role in one sentence, never as a startup traceback
                starlette.state.refused = exc
                yield
                return
            await view.start()
            try:
                async with server.session_manager.run():
                    yield
            finally:
                await view.stop()
                store.close()
        finally:
            if sign_outs is not None:
                await sign_outs.stop()
            await event_log.stop()
            if isinstance(verifier, OAuthVerifier):
                await verifier.aclose()

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "instance": instance, "tasks": view.task_count()})

    async def readyz(request: Request) -> JSONResponse:
        problem = view.not_ready() or await health.problem()
        body = {"ready": problem is None, "instance": instance, "lag": view.lag(),
                "appendDeadlineMs": settings.append_deadline_ms}
        if problem is not None:
            body["reason"] = problem
        elif degraded := health.degraded():
            body["degraded"] = degraded
        return JSONResponse(body, status_code=200 if problem is None else 503)

    async def metrics_text(request: Request) -> Response:
        return Response(await asyncio.to_thread(metrics.exposition), media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics_text),
              *ui_routes(read_side, view, service, verifier=verifier, sessions=sessions, at_issuer=at_issuer,
                         scopes=resource.scopes if resource else ()),
              *(resource.routes() if resource else ()), Mount("/", app=mcp_app)]
    middleware = [Middleware(HostCheck, security=security), Middleware(CatchingUp, view=view),
                  Middleware(Intake, limit=max(MIN_BODY_LIMIT, 4 * settings.max_input_bytes))]
    if hops.TRACE_FILE:
        middleware.insert(0, Middleware(hops.HopsOfRequests))
    if verifier is not None and sessions is not None:
        middleware += [Middleware(AuthenticationMiddleware, backend=BearerOrSession(verifier, sessions),
                                  on_error=issuer_unavailable),
                       Middleware(AuthContextMiddleware), Middleware(RequireBearer, resource=resource)]
    starlette = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    starlette.state.caught_up = view.caught_up
    starlette.state.view = view
    return starlette


class CatchingUp:
    """Answer MCP requests with 503 and Retry-After until the view has caught up with the log: a task
    read before then could be one the log already moved on."""

    def __init__(self, app: Any, view: LiveView) -> None:
        self.app = app
        self.view = view

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.view.caught_up.is_set() and scope["path"] in ("/mcp", "/mcp/"):
            response = JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
                "code": INTERNAL_ERROR, "message": f"The server is catching up with the log ({self.view.lag():,} "
                                                   "events to read); retry shortly"}},
                status_code=503, headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
