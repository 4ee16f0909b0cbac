"""Limits that hold before any handler runs (ledger.http.connections): a request head that is slow or
large is refused and its connection closed, and past the connection cap requests are answered 503 at
once while the probes keep answering; a server woken from a pause serves what its clients sent
meanwhile. Written with raw sockets: a client library would not misbehave."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import replace
from typing import Any

import pytest

from ledger.kafka.broker import free_port
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.spawn import DEMO, spawned

HEAD_TIMEOUT_MS = 1_000
MAX_HEAD = 8_192
CAP = 20


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, Any]:
    return {"header_timeout_ms": HEAD_TIMEOUT_MS, "max_header_bytes": MAX_HEAD, "max_connections": CAP,
            "keep_alive_ms": 60_000}


def address(url: str) -> tuple[str, int]:
    host, port = url.split("/")[2].split(":")
    return host, int(port)


async def answer_to(url: str, sent: bytes) -> tuple[bytes, float]:
    """The status line the server answers ``sent`` with (b"" if it closed without one), and when."""
    reader, writer = await asyncio.open_connection(*address(url))
    started = time.monotonic()
    try:
        writer.write(sent)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 30), time.monotonic() - started
    finally:
        writer.close()


async def test_a_silent_connection_is_closed_after_the_head_timeout(stack: tuple[str, Settings]) -> None:
    status, _ = await answer_to(stack[0], b"")
    assert status.split()[1] == b"408", status


async def test_a_trickled_head_is_refused(stack: tuple[str, Settings]) -> None:
    url = stack[0]
    reader, writer = await asyncio.open_connection(*address(url))
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        status = b""
        for _ in range(50):  # a header byte every 0.1 s, never finishing the head, until the server answers
            try:
                status = await asyncio.wait_for(reader.readline(), 0.1)
                break
            except TimeoutError:
                writer.write(b"X")
                await writer.drain()
    finally:
        writer.close()
    assert status.split()[1] == b"408", status


async def test_an_oversize_head_is_refused_before_it_is_read(stack: tuple[str, Settings]) -> None:
    status, _ = await answer_to(stack[0], b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000
                                + b"\r\n\r\n")
    assert status.split()[1] == b"431", status


async def test_past_the_cap_requests_are_refused_and_probes_still_answer(stack: tuple[str, Settings]) -> None:
    url = stack[0]
    held = []
    try:
        for _ in range(CAP + 5):  # keep-alive connections, each done with one request and kept open
            reader, writer = await asyncio.open_connection(*address(url))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            assert (await reader.readline()).split()[1] == b"200"
            held.append(writer)
        refused, _ = await answer_to(url, b"GET /ui/api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        probe, _ = await answer_to(url, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert refused.split()[1] == b"503", refused
        assert probe.split()[1] == b"200", probe
    finally:
        for writer in held:
            writer.close()
    await asyncio.sleep(0.5)  # the server sees them go
    served, _ = await answer_to(url, b"GET /ui/api/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert served.split()[1] == b"200", served


async def test_a_server_woken_from_a_pause_serves_what_its_clients_sent_meanwhile(settings: Settings) -> None:
    # Woken, a process runs its due timers before it reads its sockets: without a grace, the keep-alive
    # and head timers closed the connections whose requests were waiting in them.
    settings = replace(settings, keep_alive_ms=1_000, header_timeout_ms=1_000)
    await ensure_topics(settings)
    port = free_port()
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with spawned(["server", DEMO, "--port", str(port)], settings, "serving") as server:
        kept_alive = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        for reader, writer in kept_alive:
            writer.write(request)
            assert await status_of(reader) == b"200"
        fresh = [await asyncio.open_connection("127.0.0.1", port) for _ in range(10)]
        await asyncio.sleep(0.2)  # the server accepted them: their head timers run
        server.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(2)  # past both timeouts
            for _, writer in kept_alive + fresh:
                writer.write(request)
                await writer.drain()
        finally:
            server.send_signal(signal.SIGCONT)
        statuses = [await status_of(reader) for reader, _ in kept_alive + fresh]
        for _, writer in kept_alive + fresh:
            writer.close()
    assert statuses == [b"200"] * 20, statuses


async def status_of(reader: asyncio.StreamReader) -> bytes:
    """The status of the next response on a connection, read whole (b"" if the server closed it)."""
    status_line = await asyncio.wait_for(reader.readline(), 30)
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status_line.split()[1] if status_line else b""
