"""DNS-rebinding protection covers every route: a request under another site's name, or from another
site's page, reads nothing (the web timeline, the task API, the event stream, metrics, MCP). The
module's ``stack`` is on loopback without tokens: the set-up a rebinding attack aims at."""

from __future__ import annotations

import asyncio

import httpx2 as httpx
import pytest

from ledger.settings import Settings

GUARDED = ["/ui", "/ui/api/tasks", "/ui/api/tasks/some-task", "/ui/api/events", "/metrics", "/mcp"]


async def status(url: str, path: str, headers: dict[str, str]) -> int:
    base = url.removesuffix("/mcp")
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", base + path, headers=headers) as response:
            return response.status_code


@pytest.mark.parametrize("path", GUARDED)
async def test_another_host_name_is_refused(stack: tuple[str, Settings], path: str) -> None:
    url, _ = stack
    assert await status(url, path, {"Host": "rebound.example"}) == 421
    assert await status(url, path, {"Host": "rebound.example:8000"}) == 421


@pytest.mark.parametrize("path", GUARDED)
async def test_another_sites_page_is_refused(stack: tuple[str, Settings], path: str) -> None:
    url, _ = stack
    assert await status(url, path, {"Origin": "http://evil.example"}) == 403


async def test_the_servers_own_names_are_served(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    port = url.split(":")[2].split("/")[0]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert await status(url, "/ui/api/tasks", {"Host": host}) == 200
        assert await status(url, "/metrics", {"Host": host, "Origin": f"http://{host}"}) == 200


async def test_probes_answer_under_any_name(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    assert await status(url, "/healthz", {"Host": "server-1:8000"}) == 200
    assert await status(url, "/readyz", {"Host": "10.0.0.7:8000"}) == 200


async def test_two_host_headers_are_refused(stack: tuple[str, Settings]) -> None:
    # Proxies and servers disagree on which of two counts: the check could pass one name while the
    # request is served under the other. (A client library sends one, so this one is written by hand.)
    url, _ = stack
    host, port = url.split("/")[2].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /ui/api/tasks HTTP/1.1\r\nHost: {host}:{port}\r\nHost: rebound.example\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"400", status_line


async def test_a_request_target_naming_another_host_is_refused(stack: tuple[str, Settings]) -> None:
    # GET http://rebound.example/... is meant for the host it names, whatever the Host header says; the
    # app sees only the path, so the check is made before it, on the request target itself.
    url, _ = stack
    host, port = url.split("/")[2].split(":")

    async def answer(target: str) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await reader.readline()
        writer.close()
        return status_line.split()[1]

    assert await answer("http://rebound.example/ui/api/tasks") == b"400"
    assert await answer(f"http://rebound.example:{port}/healthz") == b"400"
    assert await answer(f"http://{host}:{port}/ui/api/tasks") == b"200"
