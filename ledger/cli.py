"""The ``ledger`` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from dataclasses import replace
from collections.abc import Sequence

from aiokafka.errors import KafkaConnectionError, KafkaError

from ledger.broker import DEFAULT_PORT, MEMORY_STORAGE, BrokerFailed, BrokerUnavailable, EmbeddedBroker
from ledger.settings import Settings, SettingsError, describe
from ledger.topics import TopicError, ensure_topics

DESCRIPTION = """\
ledger: a Kafka event-sourced task ledger for MCP servers.

Every task transition is an Avro event on the <prefix>.task-events topic; projections of that
log answer tasks/get, and workers resume waiting tools from it."""

EXPECTED_ERRORS = (SettingsError, BrokerUnavailable, BrokerFailed, TopicError, KafkaError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description=DESCRIPTION,
        epilog=describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    broker = commands.add_parser(
        "broker",
        help="run the embedded Kafka broker (Tansu) for development",
        description="Start the embedded Kafka-compatible broker, create the ledger topics, and run "
        "until interrupted (Ctrl-C or SIGTERM). Point other processes at it with LEDGER_BOOTSTRAP.",
        epilog=describe(),
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except KafkaConnectionError as exc:
        print(f"ledger: cannot reach Kafka: {exc}; check LEDGER_BOOTSTRAP", file=sys.stderr)
    except EXPECTED_ERRORS as exc:
        print(f"ledger: {exc}", file=sys.stderr)
    return 2


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


if __name__ == "__main__":
    sys.exit(main())
