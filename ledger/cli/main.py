"""The ``ledger`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import uvloop
from aiokafka.errors import KafkaConnectionError, KafkaError

from ledger.cli import logging_setup, mcp_client, reads
from ledger.cli.loading import AppNotFound, default_app_path, load_app
from ledger.kafka import cluster as local_cluster  # for its options: ~3 ms, no third-party module
from ledger.kafka.broker import DEFAULT_PORT, MEMORY_STORAGE, BrokerFailed, BrokerUnavailable, EmbeddedBroker, PortTaken
from ledger.kafka.profiles import KafkaUnreachable, NotKafka
from ledger.kafka.security import KafkaConfigError, KafkaSecurityError, describe_properties
from ledger.kafka.topics import TopicError, ensure_topics
from ledger.service.replay import PARALLEL_FROM_EVENTS, ReplayFailed
from ledger.settings import Settings, SettingsError, describe
from projections.postgres import DatabaseUnavailable, ForeignDatabase
from projections.store import OutdatedStore

# ledger.cli.roles (the MCP SDK, uvicorn) is imported by the commands that serve, in their run_*:
# the others (replay, tasks, tail...) start in 0.3 s instead of 0.9 s.

DESCRIPTION = """\
ledger: a Kafka event-sourced task ledger for MCP servers.

Every task transition is an Avro event on the <prefix>.task-events topic; projections of that
log answer tasks/get, and workers resume waiting tools from it."""

EXPECTED_ERRORS = (SettingsError, BrokerUnavailable, BrokerFailed, TopicError, KafkaError, AppNotFound, PortTaken,
                   NotKafka, KafkaUnreachable, KafkaSecurityError, KafkaConfigError, reads.NoSuchTask, FileNotFoundError, ReplayFailed,
                   mcp_client.ClientError, OutdatedStore, DatabaseUnavailable, ForeignDatabase,
                   psycopg.OperationalError)


def settings_help() -> str:
    return f"{describe()}\n\n{describe_properties()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description=DESCRIPTION,
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    broker = commands.add_parser(
        "broker",
        help="run the embedded Kafka broker (Tansu) for development",
        description="Start the embedded Kafka-compatible broker, create the ledger topics, and run "
        "until interrupted (Ctrl-C or SIGTERM). Point other processes at it with LEDGER_BOOTSTRAP.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    broker.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    broker.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port to listen on (default: {DEFAULT_PORT}, or a free port when {DEFAULT_PORT} is taken)",
    )
    broker.add_argument(
        "--storage",
        default=MEMORY_STORAGE,
        help="Tansu storage engine URL: memory://tansu/ (default; lost on exit) or s3://BUCKET/ "
        "(durable; needs the AWS_* variables of your S3 API)",
    )
    broker.set_defaults(run=run_broker)

    cluster = commands.add_parser(
        "cluster",
        help="run a local Apache Kafka cluster (JVMs, no Docker) with compose's settings",
        description=local_cluster.description(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    local_cluster.add_arguments(cluster)  # the options of compose/local-cluster too
    cluster.set_defaults(run=run_cluster)

    server = _role_parser(
        commands, "server", "serve MCP over HTTP (streamable HTTP at /mcp)",
        "Serve APP's tools over MCP at http://HOST:PORT/mcp. Task-augmented tool calls become tasks "
        "on the log; any number of servers can run against the same Kafka.",
    )
    _http_arguments(server)
    server.set_defaults(run=run_server)

    worker = _role_parser(
        commands, "worker", "run APP's tools for tasks on the log",
        "Join the worker group and run APP's tools for the tasks in the partitions it is given; "
        "waiting tasks are parked and resumed from the log. Run as many as you have partitions.",
    )
    worker.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve /metrics (Prometheus) and /healthz on this port (default: none)")
    worker.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="address of the metrics port (default: %(default)s)")
    worker.set_defaults(run=run_worker)

    projector = commands.add_parser(
        "projector", help="keep the shared projection store (PostgreSQL) current",
        description="Join the projector group and fold the partitions it is given into the shared projection "
                    "store in LEDGER_DATABASE_URL (task rows, history, the offsets they reach), from the "
                    "database's checkpoint on. Build the store once with `ledger replay --database`, or let a "
                    "projector fold the log from offset 0; run two or more, and one takes over a partition "
                    "where another stopped.",
        epilog=settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    projector.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (default: LEDGER_BOOTSTRAP)")
    projector.add_argument("--database", metavar="URL", help="the PostgreSQL database (default: LEDGER_DATABASE_URL)")
    projector.set_defaults(run=run_projector)

    dev = commands.add_parser(
        "dev",
        help="everything in one command: embedded broker, server and worker",
        description="Start the embedded Kafka broker, a server and a worker in one process, serving APP "
        "(default: the demo tools in examples/demo.py) at http://HOST:PORT/mcp. Events are kept in "
        "memory and lost on exit.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dev.add_argument("app", nargs="?", metavar="APP", help="module:attribute or path/to/file.py[:attribute] "
                     "(default: the demo tools)")
    _http_arguments(dev)
    dev.add_argument("--quiet", action="store_true",
                     help="print no line per task transition (created, asked, answered, completed...)")
    dev.add_argument("--metrics-port", type=int, metavar="PORT",
                     help="port of the worker's /metrics and /healthz (default: PORT + 1)")
    dev.set_defaults(run=run_dev)
    _read_commands(commands)
    _terminal_commands(commands)
    return parser


def _terminal_commands(commands: argparse._SubParsersAction) -> None:
    call_tool = commands.add_parser(
        "call", help="call a tool as a task on a running server and answer its questions here",
        description="Call TOOL with key=value arguments (a value that reads as JSON is that JSON: amount=20, "
        "ok=true) as a task on the server at --url, print its progress, ask each question it asks at this "
        "terminal, field by field, and print its result. An MCP client: 2026-07-28 requests with the tasks "
        "extension. Exit status 0 when the tool completed without error.")
    call_tool.add_argument("tool", metavar="TOOL")
    call_tool.add_argument("arguments", nargs="*", metavar="KEY=VALUE")
    _client_arguments(call_tool)
    call_tool.set_defaults(run=run_call)
    answer = commands.add_parser(
        "answer", help="list or answer the questions tasks wait on, on a running server",
        description="Without TASK_ID, list the questions your tasks on the server at --url wait on and answer "
        "the one you choose; with TASK_ID, answer that task's questions. Then follow the task to its end. "
        "An MCP client: 2026-07-28 requests with the tasks extension.")
    answer.add_argument("task_id", nargs="?", metavar="TASK_ID")
    _client_arguments(answer)
    answer.set_defaults(run=run_answer)
    sign_out = commands.add_parser(
        "sign-out", help="forget the sign-in kept for a server",
        description="Forget the tokens and registration `ledger call` and `ledger answer` kept after you signed "
        "in at the issuer of the server at --url (they are kept in $XDG_CONFIG_HOME/ledger/signins.json, "
        "~/.config by default, readable by you only). The next command signs in again.")
    _url_argument(sign_out)
    sign_out.set_defaults(run=run_sign_out)


def _url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("LEDGER_URL", "http://127.0.0.1:8000/mcp"),
                        help="the server's MCP endpoint (default: LEDGER_URL, else %(default)s)")


def _client_arguments(parser: argparse.ArgumentParser) -> None:
    _url_argument(parser)
    parser.add_argument("--token", default=os.environ.get("LEDGER_TOKEN"),
                        help="bearer token (default: LEDGER_TOKEN); the tasks are that token's principal's. "
                        "Without one, a server that names an OAuth issuer has you sign in there in your browser "
                        "once; the sign-in is kept for the next command (see `ledger sign-out`)")
    parser.add_argument("--no-browser", action="store_true",
                        help="print the sign-in address instead of also opening it in a browser")


def run_call(args: argparse.Namespace) -> int:
    arguments = mcp_client.parse_arguments(args.arguments)
    return _client(args, lambda client: mcp_client.call(client, args.tool, arguments))


def run_answer(args: argparse.Namespace) -> int:
    return _client(args, lambda client: mcp_client.answer(client, args.task_id))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_sign_out(args: argparse.Namespace) -> int:
    from ledger.cli.signin import SignIns, signins_file

    signins = SignIns(signins_file())
    print(f"signed out of {args.url}" if signins.forget(args.url) else f"no sign-in was kept for {args.url}")
    return 0


def _client(args: argparse.Namespace, work: Callable[[mcp_client.TaskClient], Awaitable[int]]) -> int:
    from ledger.cli.signin import SignIn, SignIns, signins_file

    async def session() -> int:
        sign_in = SignIn(SignIns(signins_file()), say=lambda line: print(line, file=sys.stderr),
                         open_browser=not args.no_browser)
        client = mcp_client.TaskClient(args.url, args.token, sign_in)
        try:
            return await work(client)
        finally:
            await client.close()
    # The prompt's input() blocks the event loop, where asyncio.run's own Ctrl-C handler only asks the
    # loop to stop: that Ctrl-C waited for the next Enter. Raising at once stops at the first.
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return asyncio.run(session())
    except EOFError:
        print()  # ends the prompt's line
        print("ledger: the input ended before every question was answered", file=sys.stderr)
    except KeyboardInterrupt:
        print()
        print("ledger: stopped; the task goes on, and `ledger answer` takes it up again", file=sys.stderr)
    return 2


def _read_commands(commands: argparse._SubParsersAction) -> None:
    replay = _read_parser(commands, "replay", "rebuild the projections from the log into a fresh store",
                          "Fold the task-events topic from offset 0 into a fresh SQLite projection store (task "
                          "rows, history, checkpoint), showing events/s and lag, and move it into place when "
                          "complete. A server started with LEDGER_STORE=PATH reads on from its checkpoint.")
    into = replay.add_mutually_exclusive_group()
    into.add_argument("--store", type=Path, default=None, metavar="PATH",
                      help="the store to build (default: LEDGER_STORE when it is a file, else ledger.sqlite)")
    into.add_argument("--database", nargs="?", const="", default=None, metavar="URL",
                      help="build the shared store in this PostgreSQL database instead (default URL: "
                           "LEDGER_DATABASE_URL); its tables are swapped in when complete")
    replay.add_argument("--projection", choices=("all", "status", "history"), default="all",
                        help="which projections to build (default: %(default)s)")
    start = replay.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="every event (the default)")
    start.add_argument("--from", dest="since", metavar="TIMESTAMP",
                       help="leave out events that occurred before TIMESTAMP (ISO 8601, or Unix milliseconds)")
    replay.add_argument("--to-offset", type=int, metavar="N", help="stop each partition at offset N")
    replay.add_argument("--processes", type=int, default=None, metavar="N",
                        help="processes that fold partitions side by side, at most one a partition (default: the "
                             f"CPUs this may use, {len(os.sched_getaffinity(0))}, for a topic of "
                             f"{PARALLEL_FROM_EVENTS:,} events or more, else 1)")
    replay.set_defaults(run=run_replay)

    tasks = _read_parser(commands, "tasks", "list tasks and their status",
                         "List tasks in creation order, from a store or (without --store) from the log itself.")
    tasks.add_argument("--status", choices=("working", "input_required", "completed", "failed", "cancelled",
                                            "terminal"))
    tasks.add_argument("--principal", help="only this principal's tasks")
    tasks.add_argument("--tool", help="only this tool's tasks")
    _store_and_json(tasks)
    tasks.set_defaults(run=run_tasks)

    history = _read_parser(commands, "history", "show a task's timeline",
                           "Show a task's timeline: created, each question asked, each answer (who, when, through "
                           "which protocol path), refused and duplicate answers, progress, steps, outcome, with "
                           "the partition@offset of each entry.")
    history.add_argument("task_id", metavar="TASK_ID")
    _store_and_json(history)
    history.set_defaults(run=run_history)

    tail = _read_parser(commands, "tail", "print events as they are appended",
                        "Follow the task-events topic and print each new event (Ctrl-C to stop). New events "
                        "print as they are read, which is in order for each task.")
    tail.add_argument("--from-beginning", action="store_true",
                      help="print the events already on the log first, in the order they occurred")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(run=run_tail)

    topics = _read_parser(commands, "topics", "describe ledger's topics and the workers' progress",
                          "Show each ledger topic's partitions and end offsets; for the task events, the worker "
                          "group's committed offsets, the events after them, and the open tasks there: waiting "
                          "for people, running, and not started (workers that stay behind leave tasks not "
                          "started). Empty partitions are left out unless --all.")
    topics.add_argument("--all", action="store_true", help="show empty partitions too")
    topics.add_argument("--create", action="store_true",
                        help="create the topics first when they are missing (with LEDGER_PARTITIONS, "
                             "LEDGER_REPLICATION_FACTOR, LEDGER_MIN_INSYNC_REPLICAS), as compose's one-shot does")
    topics.set_defaults(run=run_topics)

    check = _role_parser(commands, "check", "check that an app's code still follows every open task's journal",
                         "Before a deploy: read the log and re-run every open task's journal against APP's code, "
                         "with no side effect (recorded steps return their recorded values, answered questions "
                         "their answers; nothing is written). A task whose code now asks something else, runs "
                         "another step, or in another order, would fail with NonDeterminismError once the new "
                         "code resumes it: each is listed with its first difference, and the exit status is 1. "
                         "0: every open task follows its journal (tasks created after the deploy run the new "
                         "code from the start). A tool whose change is not replay-safe keeps its old path for "
                         "the tasks already on it: see the README's deploy recipe.")
    check.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="longest one task's re-run may take to reach the end of its journal (default: "
                            "%(default)s); past it the task is listed as not checked")
    check.set_defaults(run=run_check)


def _read_parser(commands: argparse._SubParsersAction, name: str, summary: str, text: str) -> argparse.ArgumentParser:
    parser = commands.add_parser(name, help=summary, description=text, epilog=settings_help(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (default: LEDGER_BOOTSTRAP)")
    return parser


def _store_and_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, metavar="PATH",
                        help="read this projection store (from `ledger replay`) instead of the log")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _role_parser(commands: argparse._SubParsersAction, name: str, summary: str, text: str) -> argparse.ArgumentParser:
    role = commands.add_parser(name, help=summary, description=text, epilog=settings_help(),
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    role.add_argument("app", metavar="APP", help="the application: module:attribute, or path/to/file.py[:attribute] "
                      "(attribute defaults to `app`)")
    role.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (default: LEDGER_BOOTSTRAP)")
    return role


def _http_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: %(default)s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _configure_logging(args.command)
    try:
        return args.run(args)
    except KafkaConnectionError as exc:
        print(f"ledger: cannot reach Kafka: {exc}; check LEDGER_BOOTSTRAP", file=sys.stderr)
    except EXPECTED_ERRORS as exc:
        print(f"ledger: {exc}", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C during a command that is not a long-running role
        print("ledger: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Whoever read the output stopped (``ledger tail | head``): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not fail once more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 2


def _configure_logging(command: str) -> None:
    """Timestamped lines on stderr: ledger's own at INFO for the long-running roles, WARNING for the
    commands that print for people (``ledger dev``'s terminal is for its banner and transitions, a
    read command's for what it read); the Kafka client's at WARNING."""
    level = logging.INFO if command in ("server", "worker", "projector", "broker") else logging.WARNING
    logging_setup.configure(level)


def run_broker(args: argparse.Namespace) -> int:
    if args.port is not None and not 0 < args.port < 65536:
        raise SettingsError(f"--port must be between 1 and 65535, got {args.port}")
    settings = Settings.from_env(bootstrap=f"{args.host}:{args.port or DEFAULT_PORT}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    broker = EmbeddedBroker(host=args.host, port=args.port, storage=args.storage, output=None)
    broker.start()
    try:
        if args.port is None and broker.port != DEFAULT_PORT:
            print(f"port {DEFAULT_PORT} is taken; using {broker.port}", flush=True)
        partitions = asyncio.run(ensure_topics(replace(settings, bootstrap=broker.bootstrap)))
        topics = ", ".join(f"{name} ({count} partition{'s' * (count != 1)})" for name, count in partitions.items())
        print(f"embedded Kafka broker ready on {broker.bootstrap} (storage {args.storage})", flush=True)
        print(f"topics: {topics}", flush=True)
        print(f"use it from other shells with: export LEDGER_BOOTSTRAP={broker.bootstrap}", flush=True)
        print("press Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            if broker.exited():
                print("ledger: the embedded broker exited unexpectedly", file=sys.stderr)
                return 1
    finally:
        broker.stop()
    print("broker stopped", flush=True)
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    return local_cluster.run(args, name="ledger cluster")  # its errors are one line on stderr, exit status 1


def run_server(args: argparse.Namespace) -> int:
    _check_port(args.port)
    settings = Settings.from_env(bootstrap=args.bootstrap)
    from ledger.cli.roles import serve  # see the note on imports above
    return _run(serve(load_app(args.app), settings, args.host, args.port))


def run_worker(args: argparse.Namespace) -> int:
    if args.metrics_port is not None:
        _check_port(args.metrics_port)
    settings = Settings.from_env(bootstrap=args.bootstrap)
    from ledger.cli.roles import work  # see the note on imports above
    return _run(work(load_app(args.app), settings, metrics_at=None if args.metrics_port is None
                     else (args.metrics_host, args.metrics_port)))


def run_projector(args: argparse.Namespace) -> int:
    settings = Settings.from_env(bootstrap=args.bootstrap)
    url = args.database or settings.database_url
    if not url:
        raise SettingsError("ledger projector needs a database: --database URL, or LEDGER_DATABASE_URL set")
    from ledger.cli.roles import project  # see the note on imports above
    return _run(project(settings, url))


def run_dev(args: argparse.Namespace) -> int:
    _check_port(args.port)
    metrics_port = args.port + 1 if args.metrics_port is None else args.metrics_port
    _check_port(metrics_port)
    source = args.app or str(default_app_path())
    from ledger.cli.roles import serve_dev  # see the note on imports above
    return _run(serve_dev(load_app(source), source, args.host, args.port, quiet=args.quiet,
                          metrics_port=metrics_port))


def run_replay(args: argparse.Namespace) -> int:
    settings = Settings.from_env(bootstrap=args.bootstrap)
    if args.database is not None:
        target: Path | str = args.database or settings.database_url or ""
        if not target:
            raise SettingsError("--database needs a URL, or LEDGER_DATABASE_URL set")
    else:
        target = args.store or Path(settings.store if settings.store not in (None, ":memory:") else "ledger.sqlite")
        if not target.parent.is_dir():
            raise FileNotFoundError(f"cannot build a projection store at {target}: the directory {target.parent} "
                                    "does not exist (create it, or choose another --store)")
    if args.to_offset is not None and args.to_offset < 0:
        raise SettingsError(f"--to-offset must not be negative, got {args.to_offset}")
    if args.processes is not None and args.processes < 1:
        raise SettingsError(f"--processes must be at least 1, got {args.processes}")
    since = _timestamp(args.since) if args.since else None
    asyncio.run(reads.run_replay(settings, target, projection=args.projection, since_ms=since,
                                   to_offset=args.to_offset, processes=args.processes))
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    settings = Settings.from_env(bootstrap=args.bootstrap)
    store = asyncio.run(reads.open_store(settings, args.store))
    reads.print_tasks(store, status=args.status, principal=args.principal, tool=args.tool, as_json=args.json)
    return 0


def run_history(args: argparse.Namespace) -> int:
    settings = Settings.from_env(bootstrap=args.bootstrap)
    store = asyncio.run(reads.open_store(settings, args.store))
    reads.print_history(store, args.task_id, as_json=args.json)
    return 0


def run_tail(args: argparse.Namespace) -> int:
    settings = Settings.from_env(bootstrap=args.bootstrap)
    return _run(reads.tail(settings, from_beginning=args.from_beginning, as_json=args.json))


def run_topics(args: argparse.Namespace) -> int:
    settings = Settings.from_env(bootstrap=args.bootstrap)
    if args.create:
        asyncio.run(ensure_topics(settings))
    asyncio.run(reads.describe_topics(settings, show_all=args.all))
    return 0


def run_check(args: argparse.Namespace) -> int:
    if not 0 < args.timeout < float("inf"):
        raise SettingsError(f"--timeout must be a number of seconds above 0, got {args.timeout}")
    settings = Settings.from_env(bootstrap=args.bootstrap)
    return asyncio.run(reads.check_app(settings, load_app(args.app), args.app, timeout_s=args.timeout))


def _timestamp(text: str) -> int:
    """Unix milliseconds from ISO 8601 (naive means UTC) or from a number of milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"--from must be ISO 8601 (2026-11-25T10:00:00Z) or Unix milliseconds, got {text!r}") \
            from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise SettingsError(f"--port must be between 1 and 65535, got {port}")


def _run(role: Coroutine[Any, Any, None]) -> int:
    """Run a role until it ends or SIGINT/SIGTERM; a signal is a clean stop (exit 0)."""
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(role)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
