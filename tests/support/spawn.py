"""Running ledger commands as separate processes, as users and compose run them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import fields

from ledger.kafka.broker import free_port
from ledger.settings import Settings

LEDGER = [sys.executable, "-m", "ledger.cli.main"]
DEMO = "examples/demo.py"


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float = 30) -> list[str]:
    lines: list[str] = []
    # A process that goes silent would hold readline past any deadline: at the deadline it is killed,
    # which ends the read.
    deadline = threading.Timer(timeout, process.kill)
    deadline.start()
    try:
        for line in iter(process.stdout.readline, ""):
            lines.append(line)
            if needle in line:
                return lines
    finally:
        deadline.cancel()
    raise AssertionError(f"{needle!r} not printed in {timeout} s; got {lines}")


def worker_process(settings: Settings, app: str = DEMO) -> subprocess.Popen[str]:
    """``ledger worker APP`` in its own process, once it started; its output is drained. The caller kills it
    (SIGKILL, as a crash) and waits for it."""
    process = subprocess.Popen(LEDGER + ["worker", app], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=role_environment(settings))
    wait_for_line(process, "ledger worker", timeout=90)
    drain(process)
    return process


def role_environment(settings: Settings) -> dict[str, str]:
    """This process's environment with every setting of ``settings`` as its LEDGER_* variable."""
    environment = dict(os.environ)
    for field in fields(Settings):
        value = getattr(settings, field.name)
        if value is not None:
            environment[field.metadata["env"]] = str(value)
    return environment


def drain(process: subprocess.Popen[str], lines: int = 200) -> deque[str]:
    """Keep reading the process's output so a full pipe never blocks it; the last ``lines`` are kept."""
    tail: deque[str] = deque(maxlen=lines)
    threading.Thread(target=lambda: tail.extend(iter(process.stdout.readline, "")), daemon=True).start()
    return tail


@contextmanager
def spawned(args: list[str], settings: Settings, ready: str, *, stop: signal.Signals = signal.SIGKILL,
            env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``ledger ARGS`` in its own process (``env`` over the variables of ``settings``), once it printed
    ``ready``; stopped with ``stop`` on the way out (SIGTERM: a clean stop, waited for). What it printed
    until ready is its ``banner``, the last lines after that its ``output``.

    When the block fails, the end of the process's output is printed for the test report.
    """
    process = subprocess.Popen(LEDGER + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**role_environment(settings), **(env or {})})
    try:
        process.banner = wait_for_line(process, ready, timeout=60)
        process.output = drain(process)
        try:
            yield process
        except BaseException:
            print(f"--- last output of ledger {' '.join(args)} ---", *process.output, sep="\n", file=sys.stderr)
            raise
    finally:
        if process.poll() is None:
            process.send_signal(stop)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


def confirmed_appends(process: subprocess.Popen[str]) -> tuple[int, int]:
    """(events the log confirmed, events appended without a confirmation) as a role that stopped cleanly said."""
    for line in reversed(process.output):
        if found := re.search(r"(\d+) events appended and confirmed by the log, (\d+) not confirmed", line):
            return int(found.group(1)), int(found.group(2))
    raise AssertionError(f"no count of appended events in: {list(process.output)[-5:]}")


@contextmanager
def ledger_roles(settings: Settings) -> Iterator[tuple[str, list[subprocess.Popen[str]]]]:
    """A server and a worker as processes, stopped cleanly at the end (so they say what the log
    confirmed); yields the MCP URL and the two processes."""
    port = free_port()
    with ExitStack() as roles:
        worker = roles.enter_context(spawned(["worker", DEMO], settings, "ledger worker", stop=signal.SIGTERM))
        server = roles.enter_context(spawned(["server", DEMO, "--port", str(port)], settings, "serving",
                                             stop=signal.SIGTERM))
        yield f"http://127.0.0.1:{port}/mcp", [server, worker]


@contextmanager
def busy_cores() -> Iterator[None]:
    """Every core of the machine kept busy by a spinning process while the block runs: the timing of
    a slow or shared CI machine, where fetches and requests interleave in ways an idle one never shows."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
