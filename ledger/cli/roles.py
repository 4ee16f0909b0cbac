"""The long-running roles behind ``ledger server``, ``ledger worker``, ``ledger projector`` and ``ledger dev``.

Each runs until SIGINT or SIGTERM, then stops cleanly: the server finishes its responses, the
worker stops its runs (another worker, or this one restarted, resumes them from the log) and
commits what is safe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import uvicorn

from ledger.cli import transitions
from ledger.engine.app import App
from ledger.engine.metrics import metrics_app
from ledger.engine.worker import Worker
from ledger.http.app import create_app
from ledger.http.connections import uvicorn_options
from ledger.http.hosts import HostCheck, transport_security
from ledger.kafka.broker import EmbeddedBroker, PortTaken, port_is_free
from ledger.kafka.security import kafka_label
from ledger.kafka.topics import ensure_topics
from ledger.service.projectors import ProjectorMember
from ledger.settings import Settings
from projections.postgres import PostgresStore, refuse_foreign


class HttpServer(uvicorn.Server):
    """uvicorn, minus its signal handling: the role that runs it owns SIGINT/SIGTERM."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _stop_on_signal() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _http_server(app: App, settings: Settings, host: str, port: int) -> HttpServer:
    if not port_is_free(host, port):
        raise PortTaken(f"port {port} on {host} is in use; choose another with --port")
    config = uvicorn.Config(create_app(app, settings, host=host, port=port), host=host, port=port, log_level="warning",
                            lifespan="on", **uvicorn_options(settings))
    return HttpServer(config)


async def _until(stop: asyncio.Event, *roles: asyncio.Task[None]) -> None:
    """Wait for a stop signal or for any role to end (an error), then stop the rest."""
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({stopped, *roles}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    for task in roles:
        if task not in done:
            task.cancel()
    results = await asyncio.gather(*roles, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


async def _serve(server: HttpServer) -> None:
    """Serve until cancelled; a cancel asks uvicorn to finish (lifespan shutdown included) and waits
    for it, rather than cancelling uvicorn mid-way (which it reports as a traceback)."""
    serving = asyncio.ensure_future(server.serve())
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise


async def serve(app: App, settings: Settings, host: str, port: int) -> None:
    stop = _stop_on_signal()
    await _until(stop, asyncio.create_task(_server_role(app, settings, host, port)))


async def _server_role(app: App, settings: Settings, host: str, port: int) -> None:
    await ensure_topics(settings)
    if settings.database_url:
        await _check_database(settings)
    server = _http_server(app, settings, host, port)
    serving = asyncio.create_task(_serve(server))
    try:
        await _started(server, serving)
        if (refused := getattr(server.config.app.state, "refused", None)) is not None:
            raise refused
        if server.started:
            print(f"ledger server: listening on http://{host}:{port}, reading the log", flush=True)
            await _caught_up(server, serving)
            if not serving.done():
                print(f"ledger server: serving {app.name} at http://{host}:{port}/mcp (Kafka {kafka_label(settings)})",
                      flush=True)
        await serving
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


async def _check_database(settings: Settings) -> None:
    """Refuse, in one sentence and before serving, a shared store folded from another topic."""
    database = await asyncio.to_thread(PostgresStore, settings.database_url)
    try:
        await refuse_foreign(database, settings)
    finally:
        database.close()


async def _started(server: HttpServer, serving: asyncio.Task[None]) -> None:
    while not server.started and not serving.done():
        await asyncio.sleep(0.05)


async def _caught_up(server: HttpServer, serving: asyncio.Task[None]) -> None:
    state = server.config.app.state  # the app of create_app
    caught_up = asyncio.create_task(state.caught_up.wait())
    following = asyncio.ensure_future(state.view.following())
    await asyncio.wait({caught_up, serving, following}, return_when=asyncio.FIRST_COMPLETED)
    caught_up.cancel()
    following.cancel()
    if following.done() and not following.cancelled() and (stopped := following.exception()) is not None:
        raise stopped  # what stopped the view (an ACL refusing its reads) ends the role


async def work(app: App, settings: Settings, metrics_at: tuple[str, int] | None = None) -> None:
    stop = _stop_on_signal()
    await ensure_topics(settings)
    worker = Worker(app, settings)
    metrics_server = None if metrics_at is None else _metrics_server(worker, *metrics_at)
    ready = asyncio.Event()
    roles = [asyncio.create_task(worker.run(ready))]
    if metrics_server is not None:
        roles.append(asyncio.create_task(_serve(metrics_server)))
    metrics = f"; metrics at http://{metrics_at[0]}:{metrics_at[1]}/metrics" if metrics_at else ""
    print(f"ledger worker {worker.worker_id}: running {', '.join(app.tools)} (Kafka {kafka_label(settings)}){metrics}",
          flush=True)
    await _until(stop, *roles)


async def project(settings: Settings, url: str) -> None:
    stop = _stop_on_signal()
    await ensure_topics(settings)
    store = await asyncio.to_thread(PostgresStore, url)
    try:
        member = ProjectorMember(settings, store, member_id=f"projector-{socket.gethostname()}-{os.getpid()}")
        print(f"ledger projector: folding {settings.events_topic} into {store.path} (Kafka {kafka_label(settings)})",
              flush=True)
        await _until(stop, asyncio.create_task(member.run()))
    finally:
        store.close()


def _metrics_server(worker: Worker, host: str, port: int) -> HttpServer:
    if not port_is_free(host, port):
        raise PortTaken(f"port {port} on {host} is in use; choose another with --metrics-port")
    # The Host checks of a server's routes, so that a page of another site cannot read the metrics either.
    served = HostCheck(metrics_app(worker.metrics, worker.health), transport_security(worker.settings, host))
    return HttpServer(uvicorn.Config(served, host=host, port=port, log_level="warning", lifespan="off"))


async def serve_dev(app: App, source: str, host: str, port: int, *, quiet: bool = False,
                    metrics_port: int | None = None) -> None:
    stop = _stop_on_signal()
    metrics_port = port + 1 if metrics_port is None else metrics_port
    for taken, option in ((port, "--port"), (metrics_port, "--metrics-port")):
        if not port_is_free(host, taken):
            raise PortTaken(f"port {taken} on {host} is in use; choose another with {option}")
    # The broker's own output (a live spinner among it) would overwrite the banner: it goes to a file.
    broker_log = Path(tempfile.gettempdir()) / f"ledger-dev-broker-{port}.log"
    with broker_log.open("ab") as output:
        broker = EmbeddedBroker(output=output)
        await asyncio.to_thread(broker.start)
        try:
            await _dev_roles(app, source, host, (port, metrics_port), broker, broker_log, stop, quiet)
        finally:
            broker.stop()
    print("ledger dev: stopped", flush=True)


async def _dev_roles(app: App, source: str, host: str, ports: tuple[int, int], broker: EmbeddedBroker,
                     broker_log: Path, stop: asyncio.Event, quiet: bool) -> None:
    port, metrics_port = ports
    settings = replace(Settings.from_env(), bootstrap=broker.bootstrap)
    await ensure_topics(settings)
    worker = Worker(app, settings, worker_id=f"dev-{socket.gethostname()}")
    server = _http_server(app, settings, host, port)
    metrics_server = _metrics_server(worker, host, metrics_port)
    ready = asyncio.Event()
    working = asyncio.create_task(worker.run(ready))
    serving = asyncio.create_task(_serve(server))
    metrics = asyncio.create_task(_serve(metrics_server))

    def up() -> bool:
        return server.started and server.config.app.state.caught_up.is_set() and ready.is_set()

    while not up() and not serving.done() and not working.done() and not stop.is_set():
        await asyncio.sleep(0.05)
    if up():
        print(_banner(app, source, host, ports, broker.bootstrap, broker_log), flush=True)
        if not quiet:
            server.config.app.state.view.listen(transitions.printer())
    await _until(stop, serving, working, metrics)


def _first(app: App) -> str:
    return next(iter(app.tools), "a tool")


def _example_call(app: App) -> str:
    """``ledger call`` of the app's first tool, with a value of the right type for each required argument."""
    if not app.tools:
        return "ledger call TOOL key=value ..."
    schema = app.get(_first(app)).input_schema
    arguments = []
    for name in schema.get("required", ()):
        field = schema.get("properties", {}).get(name, {})
        if "enum" in field:
            value = field["enum"][0]
        elif field.get("type") in ("number", "integer"):
            value = field.get("minimum", 1)
        else:
            value = {"boolean": "true"}.get(field.get("type"), "example")
        arguments.append(f"{name}={value}")
    return " ".join(["ledger call", _first(app), *arguments])


def _banner(app: App, source: str, host: str, ports: tuple[int, int], bootstrap: str, broker_log: Path) -> str:
    port, metrics_port = ports
    url = f"http://{host}:{port}/mcp"
    tools = ", ".join(app.tools)
    return f"""ledger dev: ready
  MCP endpoint     {url}   (streamable HTTP: MCP 2025-11-25 tasks, and 2026-07-28
                   with the tasks extension or multi round-trip requests)
  tools            {tools}   (from {source})
  embedded Kafka   {bootstrap}   (memory storage: events are lost on exit; its log: {broker_log})
  metrics          http://{host}:{port}/metrics (server), http://{host}:{metrics_port}/metrics (worker)

Try it:
  connect any MCP client to {url} and call {_first(app)} as a task;
  a tool that asks a question waits in input_required until you answer its elicitation.
  or from another shell, call it and answer its questions at the prompt:
    {_example_call(app)} --url {url}
  answer what your tasks wait for, and watch their timelines, at http://{host}:{port}/ui
  (or list and answer them from a shell: ledger answer --url {url})
  read the history from another shell:
    LEDGER_BOOTSTRAP={bootstrap} ledger tasks
    LEDGER_BOOTSTRAP={bootstrap} ledger history TASK_ID
Press Ctrl-C to stop."""
