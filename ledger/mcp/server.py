"""The MCP SDK's low-level server for ledger: its handlers, capabilities and request middleware."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import mcp_types as types
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server._streamable_http_modern import handle_modern_request
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.request_state import RequestStateBoundary, RequestStateSecurity
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import RequestBodyLimitMiddleware
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from opentelemetry import trace
from starlette.types import Receive, Scope, Send

from ledger import hops
from ledger.engine.app import App
from ledger.mcp import extension_tasks
from ledger.mcp.listening import TaskListeners
from ledger.mcp.session_tasks import Adapter, TaskParams
from ledger.mcp.wire import (
    principal_of,
)
from ledger.metrics import Metrics
from ledger.settings import Settings

log = logging.getLogger(__name__)


class _TaskServer(Server[Any]):
    """The low-level server, advertising the 2025-11-25 ``tasks`` capability on handshake sessions."""

    def get_capabilities(self, *args: Any, protocol_version: str | None = None, **kwargs: Any) -> types.ServerCapabilities:
        capabilities = super().get_capabilities(*args, protocol_version=protocol_version, **kwargs)
        if protocol_version in MODERN_PROTOCOL_VERSIONS:
            # The SDK advertises every kind of listen notification once subscriptions/listen has a handler;
            # ledger's lists never change and it serves no resource subscriptions, only task ids.
            return capabilities.model_copy(update={
                "tools": capabilities.tools and capabilities.tools.model_copy(update={"list_changed": False}),
                "resources": capabilities.resources and capabilities.resources.model_copy(
                    update={"list_changed": False, "subscribe": False})})
        tasks = types.ServerTasksCapability(
            list=types.TasksListCapability(), cancel=types.TasksCancelCapability(),
            requests=types.ServerTasksRequestsCapability(tools=types.TasksToolsCapability(call=types.TasksCallCapability())),
        )
        return capabilities.model_copy(update={"tasks": tasks})


def build_mcp_server(app: App, adapter: Adapter, request_state_security: RequestStateSecurity) -> _TaskServer:
    server = _TaskServer(
        app.name, version=app.version, instructions=app.instructions,
        get_tool_input_schema=lambda name: app.tools[name].input_schema if name in app.tools else None,
        on_list_tools=adapter.list_tools, on_call_tool=adapter.call_tool,
        on_list_resources=adapter.list_resources, on_list_resource_templates=adapter.list_resource_templates,
        on_read_resource=adapter.read_resource,
    )
    server.add_request_handler("tasks/get", TaskParams, adapter.get_task)
    server.add_request_handler("tasks/result", TaskParams, adapter.task_result)
    server.add_request_handler("tasks/list", types.PaginatedRequestParams, adapter.list_tasks)
    server.add_request_handler("tasks/cancel", TaskParams, adapter.cancel_task)
    server.add_request_handler("tasks/update", extension_tasks.UpdateTaskParams, adapter.update_task)
    server.add_request_handler("subscriptions/listen", types.SubscriptionsListenRequestParams,
                               TaskListeners(adapter.service, adapter.view).listen)
    server.extensions[extension_tasks.TASKS_EXTENSION] = {}
    server.middleware = without_idle_spans(server.middleware, trace.get_tracer_provider())

    async def task_augmented_calls(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        # The SDK validates tools/call results as CallToolResult; a CreateTaskResult is answered here.
        if ctx.method == "tools/call" and isinstance(ctx.params, Mapping) and ctx.params.get("task") is not None \
                and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return await adapter.call_tool_as_task(ctx)
        return await call_next(ctx)

    server.middleware.append(task_augmented_calls)
    server.middleware.append(RequestStateBoundary(request_state_security, default_audience=app.name))
    return server


def without_idle_spans(middleware: list[Any], provider: trace.TracerProvider) -> list[Any]:
    """``middleware`` without the SDK's span per request when no tracer provider is set (by the process, or
    by ``opentelemetry-instrument``): its spans would go nowhere, and cost CPU on every request
    (docs/operations.md, "Tracing")."""
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return [m for m in middleware if not isinstance(m, OpenTelemetryMiddleware)]
    return middleware


def request_state_security(settings: Settings) -> RequestStateSecurity:
    """Multi round-trip state sealed under the shared key, bound to the principal that began the round."""
    ttl = settings.request_state_ttl_ms / 1000
    if settings.request_state_key is None:
        log.info("LEDGER_REQUEST_STATE_KEY is not set: multi round-trip requests can only be continued "
                 "on this server instance")
        security = RequestStateSecurity.ephemeral(ttl=ttl)
        security.bind_principal = principal_of
        return security
    return RequestStateSecurity(keys=[settings.request_state_key], ttl=ttl, bind_principal=principal_of)


def timed(metrics: Metrics) -> Any:
    """Middleware timing every MCP request by method."""
    async def timing(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        started = time.perf_counter()
        if hops.TRACE_FILE:
            hops.hop(f"mcp.{ctx.method}")
        try:
            return await call_next(ctx)
        finally:
            hops.hop("mcp.handled")
            metrics.request_seconds.labels(ctx.method).observe(time.perf_counter() - started)
    return timing


def modern_answers_as_json(manager: StreamableHTTPSessionManager) -> None:
    """Answer each 2026-07-28 request with one JSON body (``subscriptions/listen`` stays a stream), while
    2025-11-25 sessions keep their SSE streams, on which the relay sends its questions.

    The SDK sends a request of that era as JSON too unless its handler emits a notification or runs
    past 15 s, and ledger's handlers emit none and answer within ``LEDGER_ROUND_WAIT_MS`` (10 s): what
    goes is the task group, stream and disconnect watch it sets up per request to decide that (a
    third of the server's CPU per flow at C=16). A request whose client went away runs to its answer,
    at most the round wait, instead of being cancelled; it holds nothing of the task's.
    """
    header = MCP_PROTOCOL_VERSION_HEADER.encode("ascii")
    other_eras = manager._handle_request  # the SDK's dispatch; it takes the era from the header too

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        version = next((v.decode("latin-1") for k, v in scope["headers"] if k == header), None)
        if version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
            await other_eras(scope, receive, send)
            return
        await handle_modern_request(manager.app, manager.security_settings, True, manager._lifespan_state,
                                    scope, receive, send)

    manager.asgi_app = RequestBodyLimitMiddleware(dispatch, manager.max_request_body_size)


def sessions_per_principal(manager: StreamableHTTPSessionManager, limit: int) -> None:
    """Refuse a principal a new 2025-11-25 session while it holds ``limit`` open on this server (the
    SDK bounds only the total, which one principal could take whole). Over it the SDK answers as at its
    own bound: 503 "Too many open sessions"; other principals' sessions open as before."""
    admit = manager._admit_session  # the SDK's admission: no public hook to add a rule to

    def admitted(requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        owners = manager._session_owners
        if requestor is None:  # the sessions no token opened: one principal, the anonymous one
            held = len(manager._server_instances) - len(owners)
        else:
            held = sum(owner == requestor for owner in owners.values())
        return None if held >= limit else admit(requestor)

    manager._admit_session = admitted  # type: ignore[method-assign]
