"""DNS-rebinding protection for every route a server answers, not only ``/mcp``.

A page on another site can make a browser send requests to a loopback server under a name the
attacker controls; checking ``Host`` (and ``Origin`` when a browser sends one) against the names
the server is reached by stops it reading the web timeline, the task API or the metrics as well
as the MCP endpoint. The rules are the MCP SDK's (``TransportSecuritySettings``), applied once.
"""

from __future__ import annotations

from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ledger.http.auth import LOOPBACK
from ledger.settings import Settings

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]")
# Probes (compose health checks, orchestrators) call these by whatever address they have; they
# tell whether the process is up and caught up, nothing about any task.
UNCHECKED_PATHS = ("/healthz", "/readyz")


def transport_security(settings: Settings, host: str) -> TransportSecuritySettings:
    """Loopback names always (plus ``LEDGER_ALLOWED_HOSTS``); a server on another address with no
    allowed hosts named answers any Host (it sits behind a proxy that checks them)."""
    extra = [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
    if not extra and host not in LOOPBACK:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = [*LOOPBACK_HOSTS, *extra]
    origins = [f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts,
                                     allowed_origins=origins)


class HostCheck:
    """Refuse a request whose Host (421) or Origin (403) is not one the server is reached by."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self._check = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in UNCHECKED_PATHS:
            if sum(name == b"host" for name, _ in scope["headers"]) > 1:
                # Which one counts differs between proxies and servers: the check could pass on one name
                # while the request is served under the other.
                await PlainTextResponse("Send one Host header", status_code=400)(scope, receive, send)
                return
            refusal = await self._check.validate_request(Request(scope))
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)
