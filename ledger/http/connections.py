"""Limits on connections that hold before any handler runs, so that nobody can exhaust a server
without signing in: how long a request head may take to arrive, how large it may be, how long an
idle keep-alive connection is kept, and how many connections are open at once. The two timers give
the socket a moment when they fire (``ledger.pauses``): a server woken from a pause reads the requests
its clients sent meanwhile instead of closing their connections under them.

uvicorn has the keep-alive timeout only; with httptools it buffers a request head of any size for as
long as the client takes. ``GuardedHttp`` is its HTTP/1.1 protocol with the other three, and with the
one check of the request target the app cannot make: an absolute-form target's host. Over the
connection cap a request is answered 503 at once, except the probes (``/healthz``, ``/readyz``),
which keep a reserve of connections so that an orchestrator still sees the process alive.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ledger.pauses import after_waking
from ledger.settings import Settings

PROBES = (b"/healthz", b"/readyz")
PROBE_RESERVE = 64  # connections above the cap that only a probe may use
DEFAULT_SHARE_OF_FILES = 0.75  # of the process's open-file limit, when LEDGER_MAX_CONNECTIONS is unset


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    head_timeout_s: float
    max_head_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(max_connections(settings), settings.header_timeout_ms / 1000, settings.max_header_bytes)


def max_connections(settings: Settings) -> int:
    """``LEDGER_MAX_CONNECTIONS``, else three quarters of the open files this process may have (the
    rest for the Kafka clients, the store and the probes)."""
    if settings.max_connections is not None:
        return settings.max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(PROBE_RESERVE, int(soft * DEFAULT_SHARE_OF_FILES) - PROBE_RESERVE)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn.Config options of a server with ``settings``' limits."""
    limits = ConnectionLimits.of(settings)
    protocol = type("GuardedHttp", (GuardedHttp,), {"limits": limits})
    return {"http": protocol, "timeout_keep_alive": settings.keep_alive_ms / 1000}


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on each request head and a cap on
    open connections. A subclass made by ``uvicorn_options`` carries the limits."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections + PROBE_RESERVE:
            self._refuse(503, TOO_MANY)
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and not self.transport.is_closing():  # a head still incomplete
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(431, _head_too_large(self.limits))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a keep-alive connection's next request
            self._await_head()

    def on_headers_complete(self) -> None:
        self._head_arrived()
        head_bytes = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if head_bytes > self.limits.max_head_bytes:  # a whole head in one read: refused all the same
            self._answer_with(_refusal(431, _head_too_large(self.limits)))
        elif len(self.connections) > self.limits.max_connections and \
                httptools.parse_url(self.url).path not in PROBES:
            self._answer_with(_refusal(503, TOO_MANY))
        elif not self.url.startswith(b"/") and self.url != b"*" and not self._names_its_host():
            self._answer_with(_refusal(400, ANOTHER_HOST))
        else:
            super().on_headers_complete()

    def _names_its_host(self) -> bool:
        """Whether an absolute-form request target (``GET http://host/path``) names the Host header's
        host. uvicorn hands the app only its path, so the host checks (``ledger.http.hosts``), which
        read the Host header, would pass a request meant for the host in the target."""
        try:
            target = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            return False
        authority = target.host + (b":%d" % target.port if target.port is not None else b"")
        hosts = [value for name, value in self.headers if name == b"host"]
        return hosts == [authority] or [host.lower() for host in hosts] == [authority.lower()]

    def _answer_with(self, app: Any) -> None:
        """Have this request answered by ``app`` instead of the server's, through uvicorn's own cycle."""
        served, self.app = self.app, app
        try:
            super().on_headers_complete()
        finally:
            self.app = served

    def timeout_keep_alive_handler(self) -> None:
        # Reading the socket cancels this timer (uvicorn's data_received), so a request that waited in
        # it is served rather than its connection closed.
        self.timeout_keep_alive_task = after_waking(self.loop, super().timeout_keep_alive_handler)

    def _await_head(self) -> None:
        self._head_bytes = 0
        self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_due)

    def _head_due(self) -> None:
        self._head_timer = after_waking(self.loop, self._head_late)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        self._refuse(408, "The request head did not arrive in time (LEDGER_HEADER_TIMEOUT_MS).")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` and close, before any request was handed to the app."""
        self._head_arrived()
        if self.transport.is_closing():
            return
        body = message.encode()
        self.transport.write(b"".join([
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode(),
            b"content-type: text/plain; charset=utf-8\r\n",
            f"content-length: {len(body)}\r\n".encode(),
            b"connection: close\r\n\r\n",
            body,
        ]))
        self.transport.close()


_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}
TOO_MANY = "Too many open connections; try again shortly."
ANOTHER_HOST = "The request target names another host than the Host header."


def _head_too_large(limits: ConnectionLimits) -> str:
    return f"The request head is over {limits.max_head_bytes:,} bytes (LEDGER_MAX_HEADER_BYTES)."


def _refusal(status: int, message: str) -> Any:
    """An ASGI app that answers every request ``status`` with ``message`` and closes the connection."""
    body = message.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *([(b"retry-after", b"1")] if status == 503 else [])]

    async def refuse(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return refuse
