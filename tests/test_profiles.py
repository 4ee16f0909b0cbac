"""The broker profile, and what a role says within seconds when LEDGER_BOOTSTRAP is wrong."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ledger.kafka.broker import free_port
from ledger.kafka.profiles import KAFKA, TANSU, profile_for
from tests.support.spawn import LEDGER

SENTENCE_WITHIN_S = 10


def test_the_profile_follows_what_the_broker_serves() -> None:
    assert profile_for({0, 1, 3, 18, 23}) is KAFKA
    assert profile_for({0, 1, 3, 18}) is TANSU


@contextmanager
def listening(reply: bytes | None) -> Iterator[int]:
    """A TCP server that answers every connection with ``reply`` (None: says nothing, keeps it open)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            if reply is not None:
                conn.sendall(reply)
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()


def run_worker(port: int) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    run = subprocess.run(LEDGER + ["worker", "examples/demo.py"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LEDGER_BOOTSTRAP": f"127.0.0.1:{port}"})
    return run, time.monotonic() - started


@pytest.mark.parametrize("reply,said", [
    (b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", "answered, but not as a Kafka broker (it sent "
                                                             "'HTTP/1.1 400 Bad Request')"),
    (None, "did not answer a Kafka request within 3 s"),
], ids=["http", "silent"])
def test_a_port_that_is_not_kafka_is_named_within_seconds(reply: bytes | None, said: str) -> None:
    with listening(reply) as port:
        run, took = run_worker(port)
    assert run.returncode == 2 and said in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and took < SENTENCE_WITHIN_S, (run.stderr, took)


def test_no_broker_at_all_is_one_sentence() -> None:
    run, took = run_worker(free_port())
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and took < SENTENCE_WITHIN_S, (run.stderr, took)
    assert "cannot reach Kafka at 127.0.0.1:" in run.stderr and "nothing accepts connections there" in run.stderr
