"""A request body that stops arriving is answered 408 once its time is up, not held open."""

from __future__ import annotations

import asyncio
import time

from ledger.http.intake import BODY_READ_TIMEOUT_S, jsonrpc_problem
from ledger.settings import Settings


async def test_a_body_that_stops_arriving_gets_408_in_time(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    port = int(url.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 "Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n{\"jsonrpc\": ".encode())
    await writer.drain()
    started = time.monotonic()
    status_line = await asyncio.wait_for(reader.readline(), BODY_READ_TIMEOUT_S + 10)
    waited = time.monotonic() - started
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert BODY_READ_TIMEOUT_S - 1 < waited < BODY_READ_TIMEOUT_S + 5, waited


def test_what_is_refused_before_the_sdk_sees_it() -> None:
    assert jsonrpc_problem(b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]').startswith("Invalid Request: batches")
    assert "needs an id" in jsonrpc_problem(b'{"jsonrpc": "2.0", "method": "tools/call"}')
    assert "must be a string or an integer" in jsonrpc_problem(b'{"jsonrpc": "2.0", "id": true, "method": "ping"}')
    assert jsonrpc_problem(b'{"jsonrpc": "2.0", "method": "notifications/initialized"}') is None
    assert jsonrpc_problem(b'{"jsonrpc": "2.0", "id": "a", "method": "initialize"}') is None
    assert "initialized already" in jsonrpc_problem(b'{"jsonrpc": "2.0", "id": 1, "method": "initialize"}',
                                                    in_session=True)
    assert jsonrpc_problem(b"{not json") is None  # the SDK's parse error answers it
