"""A round-robin HTTP entry point, standing in for compose's nginx in the compose smoke test."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2 as httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from ledger.cli.roles import HttpServer
from ledger.kafka.broker import free_port
from tests.support.stack import until

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length", "host"}


@asynccontextmanager
async def round_robin(backends: list[str]) -> AsyncIterator[tuple[str, dict[str, int]]]:
    """Serve a proxy that sends each request to the next backend; yields its URL and per-backend counts."""
    turns = itertools.cycle(backends)
    served = {backend: 0 for backend in backends}
    client = httpx.AsyncClient(timeout=None)

    async def forward(request: Request) -> StreamingResponse:
        backend = next(turns)
        served[backend] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = await client.send(client.build_request(
            request.method, backend + request.url.path, params=request.query_params, headers=headers,
            content=await request.body()), stream=True)
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                                 headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
                                 background=BackgroundTask(upstream.aclose))

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE"])])
    port = free_port()
    server = HttpServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())

    def started() -> bool:
        if serving.done():
            serving.result()  # it stopped before it served: its error
        return server.started

    try:
        await until(started, 30)
        yield f"http://127.0.0.1:{port}", served
    finally:
        server.should_exit = True
        await serving
        await client.aclose()
