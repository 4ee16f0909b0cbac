"""What both MCP wires (2025-11-25 and 2026-07-28) share: who is asking, times, results, errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mcp_types as types
from aiokafka.errors import KafkaError
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from starlette.requests import Request

from ledger.contract.elicitation import ANSWER_BY
from ledger.contract.events import iso
from ledger.engine.app import InvalidArguments, UnknownTool, error_result
from ledger.kafka.appender import AppendTimeout
from ledger.service.budget import OverBudget
from ledger.service.errors import CancelPending, InvalidCursor, LogBehind, Refused, TaskNotFound
from ledger.service.live_view import ReadTimeout
from ledger.service.tasks import TaskService
from projections.status import PendingElicitation, TaskRow

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = "ledger/idempotency-key"  # in a tools/call's _meta: repeats of the call name one task
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RATE_LIMITED = -32000  # in JSON-RPC's range for server-defined errors


def task_fields(row: TaskRow, *, status: str, ttl: str, poll_interval: str) -> dict[str, Any]:
    """A task as both wires show it; they differ in the status of a failed tool and two names."""
    task: dict[str, Any] = {
        "taskId": row.task_id,
        "status": status,
        "createdAt": iso(row.created_at),
        "lastUpdatedAt": iso(row.last_updated_at),
        ttl: row.ttl_ms,
    }
    if row.status_message is not None:
        task["statusMessage"] = row.status_message
    if row.poll_interval_ms is not None:
        task[poll_interval] = row.poll_interval_ms
    return task


def principal_of(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The authenticated user the request comes from; None when the server runs without auth."""
    return principal_of_request(ctx.request) if isinstance(ctx.request, Request) else None


def principal_of_request(request: Request) -> str | None:
    """The principal of the request's token (the SDK's bearer authentication sets the user)."""
    if "user" in request.scope:
        user = request.scope["user"]
        if getattr(user, "is_authenticated", False):
            token = getattr(user, "access_token", None)
            return principal_of_token(token) if isinstance(token, AccessToken) else str(user.display_name)
    return None


def principal_of_token(token: AccessToken) -> str:
    """The token's subject, else its client id; with the issuer before it when the token names one
    (``https://id.example.com#alice``), so that two issuers' subjects are two principals."""
    name = token.subject or token.client_id
    issuer = (token.claims or {}).get("iss")
    return f"{issuer}#{name}" if isinstance(issuer, str) else name


def tool_call_result(row: TaskRow) -> dict[str, Any]:
    """What the original ``tools/call`` would have returned, for a task that has ended."""
    if row.status == "completed" and row.result_json is not None:
        return json.loads(row.result_json)
    if row.status == "cancelled":
        return error_result(f"The task was cancelled: {row.status_message or 'by request'}")
    return error_result(row.error or row.status_message or "The task failed.")


async def create_task(service: TaskService, params: types.CallToolRequestParams, ctx: ServerRequestContext[Any, Any],
                      ttl: int | None, protocol: str) -> TaskRow:
    """The task for a tools/call, once every server can read it: a new one, or, for a call whose ``_meta``
    carries ``"ledger/idempotency-key"``, the one the principal's first call with that key created."""
    key = (params.meta or {}).get(IDEMPOTENCY_KEY)
    if key is not None and not isinstance(key, str):
        raise MCPError(INVALID_PARAMS, f"_meta[{IDEMPOTENCY_KEY!r}] must be a string, got {type(key).__name__}")
    with service_errors():
        try:
            return await service.create(params.name, params.arguments, principal=principal_of(ctx),
                                        ttl_ms=ttl, protocol=protocol, idempotency_key=key)
        except InvalidArguments as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from None
        except UnknownTool as exc:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {exc.name}") from None


@contextmanager
def service_errors() -> Iterator[None]:
    """Service errors as the JSON-RPC errors both tasks specs give them."""
    try:
        yield
    except (TaskNotFound, Refused, InvalidCursor) as exc:
        raise MCPError(INVALID_PARAMS, str(exc)) from None
    except ReadTimeout as exc:
        raise MCPError(INTERNAL_ERROR, f"The change was recorded but is not visible yet: {exc}") from None
    except OverBudget as exc:
        raise MCPError(RATE_LIMITED, str(exc), {"retryAfterMs": exc.retry_after_ms}) from None
    except CancelPending as exc:
        raise MCPError(INTERNAL_ERROR, f"Not cancelled yet: {exc}", {"taskId": exc.task_id}) from None
    except LogBehind as exc:
        raise MCPError(INTERNAL_ERROR, f"Nothing was recorded: {exc}; send it again") from None
    except AppendTimeout as exc:
        raise MCPError(INTERNAL_ERROR, f"The change is not confirmed: {exc}; read the task before trying again",
                       {"taskId": exc.task_id}) from None
    except KafkaError as exc:  # the log refused the write outright: nothing was recorded
        log.error("the log refused a change: %r", exc)
        raise MCPError(INTERNAL_ERROR, f"The log refused the change ({type(exc).__name__}); nothing was recorded") \
            from None


def deadline_meta(pending: PendingElicitation) -> dict[str, Any]:
    """The ``_meta`` entry saying until when a question waits for its answer (none when it waits for ever)."""
    return {} if pending.deadline is None else {ANSWER_BY: iso(pending.deadline)}
